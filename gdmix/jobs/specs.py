"""What each distributed job is asked to do, as one typed value per job.

A job's command line is written in several places: the ``gdmix`` CLI parses it, ``gdmix train
--workers N`` and the CLI's own ``--workers`` re-run it as local processes, the pipeline's
stages put it into a TFJob's, an MPIJob's or a SparkApplication's container. Each job here is a
frozen dataclass whose fields carry their flag and help (:func:`option`), so the parser
(:meth:`JobSpec.add_arguments`), the argument list (:meth:`JobSpec.to_argv`) and the parsed value
(:meth:`JobSpec.from_args`) come from one declaration and cannot drift apart:
``Spec.from_args(parser.parse_args(spec.to_argv()[1:])) == spec`` for every spec.

Only what decides the command line lives here (no TensorFlow, no Spark): the modules that run
the jobs import this one, never the reverse.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Self

from gdmix.command_line import add_set

if TYPE_CHECKING:
    from gdmix.config import GdmixConfig

_OPTION = "command_line"  # the metadata key of a field's Option


@dataclass(frozen=True)
class Option:
    """How a spec field appears on the command line: ``flag`` None means positional.

    ``launch`` options say how to start the job locally (``--workers N``), not what it computes:
    the processes they start run the spec without them (:meth:`JobSpec.for_one_worker`).
    """

    flag: str | None
    help: str | None = None
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    launch: bool = False


def option(flag: str | None = None, *, default: Any = MISSING, **how: Any) -> Any:
    """A spec field and its command-line form (no ``default``: a required argument)."""
    return field(default=default, metadata={_OPTION: Option(flag, **how)})


def gdmix_command(argv: list[str], python: str = sys.executable) -> list[str]:
    """``python -m gdmix <argv>``: how every job's process is started (``python`` is the
    interpreter's path here, plain ``python`` inside an image)."""
    return [python, "-m", "gdmix", *argv]


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A ``gdmix <command>`` invocation; subclasses declare their arguments with :func:`option`.

    Every job reads a ``config`` file (a subclass may redeclare it to give it help) with the
    ``--set KEY=VALUE`` ``overrides`` (registered last, by :func:`gdmix.command_line.add_set`).
    """

    command: ClassVar[str]
    help: ClassVar[str]
    config: str = option()
    overrides: tuple[str, ...] = ()

    @classmethod
    def add_parser(cls, commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
        """This job's subcommand of the ``gdmix`` parser."""
        parser = commands.add_parser(cls.command, help=cls.help)
        cls.add_arguments(parser)
        return parser

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Every argument of the job, in field order, then ``--set``."""
        for item, how in _options(cls):
            kwargs: dict[str, Any] = {"help": how.help}
            if how.type is not str:
                kwargs["type"] = how.type
            if how.choices:
                kwargs["choices"] = how.choices
            if how.flag is None:
                parser.add_argument(item.name, **kwargs)
                continue
            if item.default is MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = item.default
            parser.add_argument(how.flag, dest=item.name, **kwargs)
        add_set(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The spec of a parsed command line (a namespace from :meth:`add_arguments`'s parser)."""
        values = {item.name: getattr(args, item.name) for item, _ in _options(cls)}
        return cls(**values, overrides=tuple(args.overrides))

    def arguments(self) -> list[str]:
        """The command's arguments, without its name (what ``spark-submit gdmix/prep/submit.py``
        takes); an option at its default is left out."""
        argv = []
        for item, how in _options(type(self)):
            value = getattr(self, item.name)
            if how.flag is None:
                argv.append(str(value))
            elif value is not None and (item.default is MISSING or value != item.default):
                argv += [how.flag, str(value)]
        for override in self.overrides:
            argv += ["--set", override]
        return argv

    def to_argv(self) -> list[str]:
        """``[command, *arguments]``: what follows ``gdmix`` (or ``python -m gdmix``)."""
        return [self.command, *self.arguments()]

    def load_config(self) -> GdmixConfig:
        """The job's :class:`~gdmix.config.GdmixConfig`: the file with the overrides applied."""
        from gdmix.config import load_config

        return load_config(self.config, self.overrides)

    def for_one_worker(self) -> Self:
        """The spec each process started by a launch option runs: the launch options at their
        defaults, everything else as it is."""
        return dataclasses.replace(self, **{item.name: item.default for item, how in _options(type(self))
                                            if how.launch})


def _options(cls: type[JobSpec]) -> list[tuple[dataclasses.Field, Option]]:
    return [(item, item.metadata[_OPTION]) for item in fields(cls) if _OPTION in item.metadata]


@dataclass(frozen=True, kw_only=True)
class CoordinateJobSpec(JobSpec):
    """What the fixed-effect and DeText jobs share (the pipeline's launchers pass them)."""

    config: str = option(help="YAML configuration file (a local path or a URI)")
    coordinate: str = option("--coordinate", help="name of the coordinate")
    output: str = option("--output", help="where the model and scores are committed")
    offsets: str | None = option("--offsets", default=None,
                                 help="Parquet with uid, offset: the other coordinates' scores")
    index_maps: str | None = option("--index-maps", default=None, help="a model directory whose index_maps/ to use")
    warm_start: str | None = option("--warm-start", default=None, help="a model directory to start from")
    workers: int | None = option("--workers", default=None, type=int, launch=True,
                                 help="launch N local workers on 127.0.0.1")


@dataclass(frozen=True, kw_only=True)
class FixedEffectJobSpec(CoordinateJobSpec):
    """``gdmix fixed-effect``: one fixed-effect coordinate on the workers of ``TF_CONFIG``."""

    command: ClassVar[str] = "fixed-effect"
    help: ClassVar[str] = "train one fixed-effect coordinate as a job (one worker of TF_CONFIG, or N local)"

    checkpoint_every: int = option("--checkpoint-every", default=50, type=int, help="iterations between checkpoints")
    timeout: float = option("--timeout", default=600.0, type=float, help="seconds a collective may wait")


@dataclass(frozen=True, kw_only=True)
class DetextJobSpec(CoordinateJobSpec):
    """``gdmix detext``: a DeText coordinate on TF collective workers or Horovod ranks."""

    command: ClassVar[str] = "detext"
    help: ClassVar[str] = "train a DeText coordinate as a job (one worker of TF_CONFIG / horovodrun, or N local)"

    validation_offsets: str | None = option("--validation-offsets", default=None,
                                            help="the same for the validation rows (best-step selection)")
    launcher: str = option("--launcher", default="tf", choices=("tf", "horovod"), launch=True,
                           help="with --workers: TF collective workers (TF_CONFIG) or horovodrun")


@dataclass(frozen=True, kw_only=True)
class RandomEffectJobSpec(JobSpec):
    """``gdmix train-random-effect``: some partitions of a random effect (worker k of n takes
    every n-th of them)."""

    command: ClassVar[str] = "train-random-effect"
    help: ClassVar[str] = "train a random effect partition by partition"

    coordinate: str = option("--coordinate")
    output: str = option("--output", help="where models, scores and partition markers go")
    partitions: str = option("--partitions", default="all", help="a:b, a list like 0,3,5, or all (default)")
    offsets: str | None = option("--offsets", default=None, help="output of 'gdmix offsets' for this coordinate")
    warm_start: str | None = option("--warm-start", default=None,
                                    help="an earlier output of this command (or a model directory)")
    workers: int | None = option("--workers", default=None, type=int, launch=True,
                                 help="split the partitions among N local processes")


@dataclass(frozen=True, kw_only=True)
class PrepJobSpec(JobSpec):
    """``gdmix prep`` (also ``spark-submit gdmix/prep/submit.py``): the Spark data preparation."""

    command: ClassVar[str] = "prep"
    help: ClassVar[str] = "Spark data preparation: contract data, index maps, partitions"

    config: str = option(help="YAML configuration file with a 'prep' section")

