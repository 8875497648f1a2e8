"""What a run shows a person: progress during long steps and a summary table at the end.

Library code reports through a :class:`Reporter`, so tests and pipeline components can run
silently (:class:`SilentReporter`) while the CLI shows rich progress bars on stderr and the
summary on stdout.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ProgressCallback = Callable[[float, float], None]


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def progress(self, description: str) -> contextlib.AbstractContextManager[ProgressCallback]: ...


class SilentReporter:
    def info(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback]:
        yield lambda done, total: None


class ConsoleReporter:
    """Messages and progress bars on stderr (stdout stays for results)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)

    def info(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback]:
        if not self.console.is_terminal:  # no bars in logs; the step's result line follows
            yield lambda done, total: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=None)

            def update(done: float, total: float) -> None:
                bar.update(task, completed=done, total=total)

            yield update


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(results: list[dict]) -> Table:
    """One line per trained coordinate (in training order) with its metrics and time.

    Validation columns come first; a run with a held-out test split (``data.test``) also shows
    test columns, labelled as such, beside them.
    """
    table = Table(title="GDMix training summary", title_justify="left")
    with_test = any(row.get("test") for row in results)
    held_out = [("val", "validation")] + ([("test", "test")] if with_test else [])
    headers = [("coordinate", "left"), ("type", "left"), ("pass", "right")]
    for short, _ in held_out:
        headers += [(f"{short} AUC", "right"), (f"{short} logloss", "right"), (f"{short} AUPR", "right")]
    headers += [("train AUC", "right"), ("seconds", "right"), ("notes", "left")]
    for header, justify in headers:
        table.add_column(header, justify=justify)
    for row in results:
        cells = [row["name"], row["type"], str(row["pass"])]
        for _, split in held_out:
            values = row.get(split) or {}
            cells += [_fmt(values.get("auc")), _fmt(values.get("logloss")), _fmt(values.get("aupr"))]
        train = row.get("train") or {}
        cells += [_fmt(train.get("auc")), _fmt(row.get("train_seconds"), 2), _notes(row)]
        table.add_row(*cells)
    return table


def _notes(row: dict) -> str:
    solver = row.get("solver", {})
    notes = []
    if row["type"] == "fixed_effect":
        notes.append(f"{solver.get('iterations', 0)} iterations")
        if not solver.get("converged", True):
            notes.append("NOT converged")
    else:
        notes.append(f"{solver.get('entities_trained', 0)} entities")
        for key, label in [("unconverged_entities", "unconverged"), ("one_label_entities", "one-label"),
                           ("entities_below_min_rows", "below min_rows"),
                           ("entities_down_sampled", "down-sampled")]:
            if solver.get(key):
                notes.append(f"{solver[key]} {label}")
        if solver.get("l2") is not None:  # l2: auto
            intercept = ""
            if solver.get("intercept_l2") is not None:  # per_group: the intercept's own prior
                intercept = (f", intercept l2 {solver['intercept_l2']:.4g} "
                             f"(prior variance {solver['intercept_prior_variance']:.4g})")
            notes.append(f"learned l2 {solver['l2']:.4g} (prior variance {solver['prior_variance']:.4g}"
                         + (", at the edge of the search" if solver.get("l2_at_search_bound") else "") + ")"
                         + intercept)
    return ", ".join(notes)


def print_summary(results: list[dict], console: Console | None = None) -> None:
    console = console or Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140)
    console.print(summary_table(results))
