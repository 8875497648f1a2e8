"""Entry file for ``spark-submit``: ``spark-submit [options] gdmix/prep/submit.py CONFIG [--set ...]``.

Runs ``gdmix prep`` inside the Spark application spark-submit (or the Spark operator) starts;
set ``prep.spark.master: null`` so the master comes from spark-submit. The ``gdmix prep``
command (:mod:`gdmix.cli`) runs :func:`prep` too, with the same arguments
(:class:`~gdmix.jobs.specs.PrepJobSpec`); this file does not import the CLI.
"""

from __future__ import annotations

import argparse
import sys

from gdmix.command_line import log, run_command
from gdmix.io.fs import to_json
from gdmix.jobs.specs import PrepJobSpec


def prep(job: PrepJobSpec) -> int:
    """``gdmix prep``: Spark data preparation; its summary (JSON) goes to stdout."""
    from gdmix.prep.run import run_prep

    summary = run_prep(job.load_config(), log=log)
    print(to_json(summary), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdmix prep", description="Spark data preparation (inside spark-submit)")
    PrepJobSpec.add_arguments(parser)
    job = PrepJobSpec.from_args(parser.parse_args(sys.argv[1:] if argv is None else argv))
    return run_command(lambda: prep(job))


if __name__ == "__main__":
    sys.exit(main())
