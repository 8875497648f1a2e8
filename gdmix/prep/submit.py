"""Entry file for ``spark-submit``: ``spark-submit [options] gdmix/prep/submit.py CONFIG [--set ...]``.

Runs ``gdmix prep`` inside the Spark application spark-submit (or the Spark operator) starts;
set ``prep.spark.master: null`` so the master comes from spark-submit. The ``gdmix prep``
command (:mod:`gdmix.cli`) runs :func:`prep` too; this file does not import the CLI.
"""

from __future__ import annotations

import argparse
import sys

from gdmix.command_line import add_set, log, run_command
from gdmix.io.fs import to_json


def prep(config: str, overrides: list[str]) -> int:
    """``gdmix prep``: Spark data preparation; its summary (JSON) goes to stdout."""
    from gdmix.config import load_config
    from gdmix.prep.job import run_prep

    summary = run_prep(load_config(config, overrides), log=log)
    print(to_json(summary), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdmix prep", description="Spark data preparation (inside spark-submit)")
    parser.add_argument("config", help="YAML configuration file with a 'prep' section")
    add_set(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: prep(args.config, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
