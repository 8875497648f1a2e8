"""The jobs' command lines (gdmix.jobs.specs): one declaration per job for the CLI's parser, the
argument lists the launchers build, and the CLI's ``--workers`` re-runs."""

from __future__ import annotations

import argparse
import sys

import pytest

from gdmix import cli
from gdmix.jobs.specs import (
    DetextJobSpec,
    FixedEffectJobSpec,
    JobSpec,
    PrepJobSpec,
    RandomEffectJobSpec,
    gdmix_command,
)
from gdmix.prep import submit

#: for every job: a spec with only what is required and one with every argument set
SPECS = {
    FixedEffectJobSpec: [
        FixedEffectJobSpec(config="c.yaml", coordinate="global", output="out"),
        FixedEffectJobSpec(config="s3://b/c.yaml", coordinate="global", output="s3://b/out", offsets="s3://b/off",
                           index_maps="s3://b/prepared", warm_start="s3://b/previous", workers=3,
                           checkpoint_every=7, timeout=12.5, overrides=("a=1", "coordinates.global.l2=2")),
    ],
    DetextJobSpec: [
        DetextJobSpec(config="c.yaml", coordinate="deep", output="out"),
        DetextJobSpec(config="c.yaml", coordinate="deep", output="out", offsets="off", validation_offsets="voff",
                      index_maps="maps", warm_start="prev", workers=2, launcher="horovod", overrides=("x=y",)),
    ],
    RandomEffectJobSpec: [
        RandomEffectJobSpec(config="c.yaml", coordinate="per_user", output="out"),
        RandomEffectJobSpec(config="c.yaml", coordinate="per_user", output="out", partitions="0:4", offsets="off",
                            warm_start="prev", workers=4, overrides=("z=0",)),
    ],
    PrepJobSpec: [
        PrepJobSpec(config="c.yaml"),
        PrepJobSpec(config="s3://b/c.yaml", overrides=("prep.spark.master=null",)),
    ],
}
HANDLERS = {FixedEffectJobSpec: cli._fixed_effect, DetextJobSpec: cli._detext,
            RandomEffectJobSpec: cli._train_random_effect, PrepJobSpec: cli._prep}
ALL = [spec for specs in SPECS.values() for spec in specs]


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _arguments(parser: argparse.ArgumentParser) -> list[tuple]:
    """Everything a parser accepts, as comparable values (the handler default aside)."""
    return [(tuple(a.option_strings), a.dest, a.default, a.type, a.required, a.choices, a.help, a.nargs,
             type(a).__name__) for a in parser._actions]


@pytest.mark.parametrize("spec", ALL, ids=lambda s: " ".join(s.to_argv()))
def test_a_spec_survives_the_cli_parser(spec):
    args = cli._parser().parse_args(spec.to_argv())
    assert type(spec).from_args(args) == spec
    assert args.handler is HANDLERS[type(spec)]


@pytest.mark.parametrize("job", SPECS, ids=lambda job: job.command)
def test_the_cli_parses_each_job_with_the_specs_arguments_only(job):
    """A flag added to the CLI and not to the spec (or the reverse) fails here."""
    own = argparse.ArgumentParser()
    job.add_arguments(own)
    assert _arguments(_subcommand(cli._parser(), job.command)) == _arguments(own)


def test_the_arguments_are_the_ones_the_cli_always_had():
    """The public surface: flags, defaults and help of the job commands."""
    fixed = _subcommand(cli._parser(), "fixed-effect")
    assert [a.option_strings or [a.dest] for a in fixed._actions] == [
        ["-h", "--help"], ["config"], ["--coordinate"], ["--output"], ["--offsets"], ["--index-maps"],
        ["--warm-start"], ["--workers"], ["--checkpoint-every"], ["--timeout"], ["--set"]]
    defaults = fixed.parse_args(["c.yaml", "--coordinate", "g", "--output", "o"])
    assert (defaults.checkpoint_every, defaults.timeout, defaults.workers, defaults.overrides) == (50, 600.0, None, [])
    detext = _subcommand(cli._parser(), "detext")
    assert [a.option_strings for a in detext._actions][-3:] == [["--validation-offsets"], ["--launcher"], ["--set"]]
    assert detext.parse_args(["c", "--coordinate", "d", "--output", "o"]).launcher == "tf"
    with pytest.raises(SystemExit):
        detext.parse_args(["c", "--coordinate", "d", "--output", "o", "--launcher", "mpi"])
    random = _subcommand(cli._parser(), "train-random-effect")
    assert random.parse_args(["c", "--coordinate", "u", "--output", "o"]).partitions == "all"
    with pytest.raises(SystemExit):
        random.parse_args(["c", "--output", "o"])  # --coordinate is required


@pytest.mark.parametrize("spec", SPECS[PrepJobSpec], ids=lambda s: " ".join(s.to_argv()))
def test_spark_submits_entry_file_takes_the_prep_specs_arguments(spec, monkeypatch):
    received = []
    monkeypatch.setattr(submit, "prep", lambda job: received.append(job) or 0)
    assert submit.main(spec.arguments()) == 0
    assert received == [spec]


def test_a_spec_yields_exactly_its_flags():
    base = {"config": "c.yaml", "coordinate": "g", "output": "o"}
    assert FixedEffectJobSpec(**base).to_argv() == ["fixed-effect", "c.yaml", "--coordinate", "g", "--output", "o"]
    assert FixedEffectJobSpec(**base, offsets="off", warm_start="w").to_argv() == [
        "fixed-effect", "c.yaml", "--coordinate", "g", "--output", "o", "--offsets", "off", "--warm-start", "w"]
    assert FixedEffectJobSpec(**base, checkpoint_every=50, timeout=600.0).to_argv()[-1] == "o"  # the defaults
    assert DetextJobSpec(**base, index_maps="p", validation_offsets="v").to_argv() == [
        "detext", "c.yaml", "--coordinate", "g", "--output", "o", "--index-maps", "p", "--validation-offsets", "v"]
    assert RandomEffectJobSpec(**base, partitions="2:5", overrides=("a=1", "b=2")).to_argv() == [
        "train-random-effect", "c.yaml", "--coordinate", "g", "--output", "o", "--partitions", "2:5",
        "--set", "a=1", "--set", "b=2"]
    prep = PrepJobSpec(config="s3://b/c.yaml", overrides=("prep.spark.master=null",))
    assert prep.arguments() == ["s3://b/c.yaml", "--set", "prep.spark.master=null"]
    assert prep.to_argv() == ["prep", *prep.arguments()]
    assert gdmix_command(prep.to_argv(), python="python")[:4] == ["python", "-m", "gdmix", "prep"]


def test_one_worker_runs_the_job_without_its_launch_options():
    full = SPECS[DetextJobSpec][1]
    one = full.for_one_worker()
    assert (one.workers, one.launcher) == (None, "tf")
    assert one == DetextJobSpec(**{**vars(full), "workers": None, "launcher": "tf"})
    assert "--workers" not in one.to_argv() and "--launcher" not in one.to_argv()
    assert PrepJobSpec(config="c").for_one_worker() == PrepJobSpec(config="c")


@pytest.mark.parametrize("argv, launcher, workers, worker_argv", [
    (["fixed-effect", "c.yaml", "--workers", "3", "--coordinate", "g", "--output", "o", "--set", "x=1"],
     "launch_local", 3, ["fixed-effect", "c.yaml", "--coordinate", "g", "--output", "o", "--set", "x=1"]),
    (["detext", "c.yaml", "--coordinate", "d", "--output", "o", "--workers=2", "--launcher", "horovod"],
     "launch_horovod", 2, ["detext", "c.yaml", "--coordinate", "d", "--output", "o"]),
    (["detext", "c.yaml", "--coordinate", "d", "--output", "o", "--workers", "2", "--launcher=tf"],
     "launch_local", 2, ["detext", "c.yaml", "--coordinate", "d", "--output", "o"]),
    (["train-random-effect", "c.yaml", "--coordinate", "u", "--output", "o", "--partitions", "0:8", "--workers", "4"],
     "launch_local", 4, ["train-random-effect", "c.yaml", "--coordinate", "u", "--output", "o", "--partitions", "0:8"]),
])
def test_workers_rerun_the_job_without_the_launch_options(argv, launcher, workers, worker_argv, monkeypatch):
    launched = []
    for name in ("launch_local", "launch_horovod"):
        monkeypatch.setattr(f"gdmix.distributed.launcher.{name}",
                            lambda command, count, name=name: launched.append((name, command, count)) or 0)
    assert cli.main(argv) == 0
    assert launched == [(launcher, [sys.executable, "-m", "gdmix", *worker_argv], workers)]


@pytest.mark.parametrize("command", ["fixed-effect", "detext", "train-random-effect"])
def test_fewer_than_one_worker_is_a_user_error(command, monkeypatch, capsys):
    monkeypatch.setattr("gdmix.distributed.launcher.launch_local", lambda *a: pytest.fail("launched"))
    assert cli.main([command, "c.yaml", "--coordinate", "c", "--output", "o", "--workers", "0"]) == 1
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err


def test_every_job_spec_is_tested_here():
    assert set(SPECS) == {cls for cls in _subclasses(JobSpec) if "command" in vars(cls)}


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}
