"""What every gdmix entry point shares: the ``gdmix`` command (:mod:`gdmix.cli`) and the files
other programs start directly (``spark-submit gdmix/prep/submit.py``).

Progress lines go to stderr and stdout carries only a command's result; a user error
(:class:`~gdmix.errors.GdmixError`) prints one message, no traceback, and exits with status 1.
Nothing here imports the CLI, so the layers below it can use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from gdmix.errors import GdmixError


def log(message: str) -> None:
    """Progress lines go to stderr; stdout carries only the command's result."""
    print(message, file=sys.stderr, flush=True)


def add_set(parser: argparse.ArgumentParser) -> None:
    """The ``--set KEY=VALUE`` option (repeatable) into ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set coordinates.per_user.l2=10")


def run_command(command: Callable[[], int | None]) -> int:
    """Run one command; its exit status (None counts as 0), 1 after one message for a user error,
    130 when interrupted."""
    try:
        return command() or 0
    except GdmixError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 1
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; no output was committed")
        return 130
