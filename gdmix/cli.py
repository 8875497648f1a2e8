"""The ``gdmix`` command: train, score, evaluate, datasets, pipeline, demo.

User errors (bad config, bad data) print one clear message and exit with status 1; nothing
that looks like a finished output is left behind (outputs are staged, then committed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gdmix import __version__
from gdmix.command_line import add_set as _add_set
from gdmix.command_line import log as _log
from gdmix.command_line import run_command
from gdmix.errors import GdmixError
from gdmix.io.fs import to_json
from gdmix.jobs.specs import DetextJobSpec, FixedEffectJobSpec, PrepJobSpec, RandomEffectJobSpec, gdmix_command

# shipped inside the package (examples/ at the repository root links here)
DEMO_CONFIG = Path(__file__).resolve().parent / "examples" / "movielens-100k" / "lr.yaml"
DEMO_SYNTHETIC_ROWS = 100_000


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return run_command(lambda: args.handler(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdmix", description="Generalized Deep Mixed Models.")
    parser.add_argument("--version", action="version", version=f"gdmix {__version__}")
    commands = parser.add_subparsers(title="commands")

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML configuration file")
    train.add_argument("--workers", type=int, default=1,
                       help="train fixed effects on N local worker processes (TF collective all-reduce)")
    _add_set(train)
    train.set_defaults(handler=_train)

    FixedEffectJobSpec.add_parser(commands).set_defaults(handler=_fixed_effect)
    DetextJobSpec.add_parser(commands).set_defaults(handler=_detext)
    PrepJobSpec.add_parser(commands).set_defaults(handler=_prep)

    offsets = commands.add_parser("offsets", help="Spark: join other coordinates' scores to a random effect's partitions")
    offsets.add_argument("config")
    offsets.add_argument("--coordinate", required=True)
    offsets.add_argument("--scores", nargs="+", required=True, help="score datasets (uid, coordinate_score)")
    offsets.add_argument("--output", required=True)
    _add_set(offsets)
    offsets.set_defaults(handler=_offsets)

    RandomEffectJobSpec.add_parser(commands).set_defaults(handler=_train_random_effect)

    score = commands.add_parser("score", help="score a dataset with a trained model")
    score.add_argument("model_dir", help="output directory of a training run")
    score.add_argument("data", help="dataset to score (Parquet, data contract)")
    score.add_argument("out", help="where to write the scores")
    score.add_argument("--posterior", choices=("mean", "sample"), default="mean",
                       help="score at the coefficients (mean) or at one draw from the posterior of every coordinate "
                            "saved with variances (sample: exploration)")
    score.add_argument("--sample-seed", type=int, default=0, help="seed of --posterior sample's draw")
    score.add_argument("--format", dest="form", choices=("parquet", "gdmix-avro"), default="parquet",
                       help="one Parquet table (default), or GDMix's score Avro: OUT/<coordinate>/part-00000.avro")
    score.set_defaults(handler=_score)

    export = commands.add_parser("export-model", help="write a trained model in another system's format")
    export.add_argument("model_dir", help="a trained model (gdmix train's output, the pipeline's model)")
    export.add_argument("out", help="where to write it: OUT/<coordinate>/models/part-*.avro, as GDMix laid it out")
    export.add_argument("--format", dest="form", choices=("photon-avro",), required=True,
                        help="photon-avro: Photon ML's BayesianLinearModelAvro, as GDMix and Photon ML read it")
    export.add_argument("--files", type=int, default=1, help="files per random effect (consecutive entity ranges)")
    export.set_defaults(handler=_export_model)

    import_ = commands.add_parser("import-model", help="read a model from another system's format into ours")
    import_.add_argument("path", help="GDMix's output_dir (<coordinate>/models/*.avro), Photon ML's model folder "
                                      "(fixed-effect/ and random-effect/<coordinate>/coefficients/), or our export")
    import_.add_argument("out", help="the model directory to write (scorable, usable as warm_start)")
    import_.add_argument("--format", dest="form", choices=("photon-avro",), required=True)
    import_.add_argument("--config", help="the configuration whose coordinates the models are (default: the "
                                          "model.json of an export of ours)")
    _add_set(import_)
    import_.set_defaults(handler=_import_model)

    evaluate = commands.add_parser("evaluate", help="AUC, log loss and AUPR of a score dataset")
    evaluate.add_argument("scores", help="Parquet scores with label and score (logit) columns, or GDMix's score Avro")
    evaluate.add_argument("--label", default="label")
    evaluate.add_argument("--score", default="score")
    evaluate.add_argument("--weight", default="weight", help="weight column, used if present")
    evaluate.set_defaults(handler=_evaluate)

    datasets = commands.add_parser("datasets", help="build example datasets").add_subparsers(title="datasets")
    movielens = datasets.add_parser("movielens-100k", help="MovieLens-100K exactly as GDMix's example")
    movielens.add_argument("--out", required=True)
    movielens.add_argument("--source", help="GroupLens ml-100k folder, recbole atomic files or recbole wheel")
    movielens.add_argument("--seed", type=int, default=42)
    movielens.add_argument("--test-fraction", type=float, default=0.0,
                           help="share of all rows held out as out/test/ (drawn first; validation stays 20%%)")
    movielens.add_argument("--test-seed", type=int,
                           help="seed of the test rows (default --seed); fixed, it keeps them across seeds")
    movielens.set_defaults(handler=_movielens)
    synthetic = datasets.add_parser("synthetic", help="data with known fixed and random effects")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--rows", type=int, required=True)
    synthetic.add_argument("--entities", default="user_id=1000",
                           help="comma-separated COLUMN=COUNT, e.g. user_id=1000,item_id=500")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--global-features", type=int, default=20)
    synthetic.add_argument("--global-nnz", type=int, default=5)
    synthetic.add_argument("--re-features", type=int, default=5)
    synthetic.add_argument("--re-nnz", type=int, default=3)
    synthetic.add_argument("--skew", type=float, default=0.0, help="power-law exponent of entity sizes")
    synthetic.add_argument("--validation-fraction", type=float, default=0.2)
    synthetic.add_argument("--test-fraction", type=float, default=0.0,
                           help="share of all rows held out as out/test/ (taken from train)")
    synthetic.set_defaults(handler=_synthetic)

    pipeline = commands.add_parser("pipeline", help="the Kubeflow pipeline: compile, run locally, submit")
    pipeline_commands = pipeline.add_subparsers(title="pipeline commands")
    compile_ = pipeline_commands.add_parser("compile", help="compile a config's pipeline to KFP v2 YAML")
    compile_.add_argument("config")
    compile_.add_argument("-o", "--output", required=True, help="the YAML file to write")
    compile_.add_argument("--backend", choices=("local", "kubernetes"),
                          help="how distributed steps run (pipeline.backend): in the step's pod, or as "
                               "TFJob / MPIJob / SparkApplication")
    compile_.add_argument("--name", help="the pipeline's name in KFP (pipeline.name)")
    compile_.add_argument("--registry", help="image registry of the steps (default $GDMIX_IMAGE_REGISTRY or localhost)")
    compile_.add_argument("--tag", help="image tag of the steps (default $GDMIX_IMAGE_TAG or the gdmix version)")
    _add_set(compile_)
    compile_.set_defaults(handler=_pipeline_compile)
    run = pipeline_commands.add_parser("run", help="run the pipeline here with kfp.local")
    run.add_argument("config")
    run.add_argument("--local", action="store_true", required=True, help="run with kfp.local (the only way here)")
    run.add_argument("--workdir", help="kfp.local's pipeline root (default: a temporary directory)")
    run.add_argument("--data-root", default="", help="object-store prefix for the stages' data (e.g. s3://b/runs)")
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="tasks as local processes (default) or in their containers (needs Docker)")
    run.add_argument("--verbose", action="store_true", help="show kfp.local's full output (else: a log file)")
    _add_set(run)
    run.set_defaults(handler=_pipeline_run)
    submit = pipeline_commands.add_parser("submit", help="submit a run to a Kubeflow Pipelines API")
    submit.add_argument("config")
    submit.add_argument("--host", required=True, help="the KFP API, e.g. http://127.0.0.1:8888")
    submit.add_argument("--experiment", default="gdmix")
    submit.add_argument("--data-root", default="")
    submit.add_argument("--train-data", default="", help="override the training data URI")
    submit.add_argument("--validation-data", default="", help="override the validation data URI")
    submit.add_argument("--test-data", default="", help="override the held-out test data URI")
    submit.add_argument("--wait", action="store_true", help="wait for the run and fail if it fails")
    submit.add_argument("--namespace", help="multi-user Kubeflow: the profile namespace to run in")
    submit.add_argument("--token", help="bearer token for the KFP API (default: $KFP_TOKEN)")
    submit.add_argument("--token-path", help="file holding a bearer token, re-read per request "
                                             "(in a cluster: $KF_PIPELINES_SA_TOKEN_PATH)")
    submit.add_argument("--cookies", help="session cookie(s) of an authenticated browser, e.g. "
                                          "'authservice_session=...' (default: $KFP_COOKIES)")
    submit.add_argument("--ssl-ca-cert", help="CA bundle of an HTTPS KFP endpoint")
    submit.add_argument("--ui-host", help="where the KFP UI is, for the run's link (default: --host)")
    submit.add_argument("--version-name", help="name of the uploaded pipeline version (default: name and time)")
    _add_set(submit)
    submit.set_defaults(handler=_pipeline_submit)

    demo = commands.add_parser("demo", help="the embedded default job: MovieLens-100K end to end")
    demo.add_argument("--config", default=str(DEMO_CONFIG))
    demo.add_argument("--workdir", default="demo-output", help="where data and outputs go")
    demo.add_argument("--in-process", action="store_true", help="run 'gdmix train' instead of the pipeline")
    _add_set(demo)
    demo.set_defaults(handler=_demo)
    return parser


def _train(args) -> int:
    from gdmix.config import load_config

    config = load_config(args.config, args.overrides)
    return _run_training(config, args.workers)


def _run_training(config, workers: int = 1) -> int:
    from gdmix.game import train
    from gdmix.console import ConsoleReporter, print_summary

    if workers < 1:
        raise GdmixError(f"--workers must be at least 1, got {workers}")
    result = train(config, ConsoleReporter(), workers=workers)
    print_summary(result.coordinates)
    print(f"outputs written to {result.output}")
    return 0


def _fixed_effect(args) -> int:
    """Under ``--workers N`` this process only launches N copies of the job (minus the flag)."""
    job = FixedEffectJobSpec.from_args(args)
    if job.workers is not None:
        return _launch_copies(job)
    from gdmix.jobs.fixed_effect import run_fixed_effect_job

    summary = run_fixed_effect_job(
        job.load_config(), job.coordinate, job.output, offsets=job.offsets, index_maps=job.index_maps,
        warm_start=job.warm_start, checkpoint_every=job.checkpoint_every, timeout_seconds=job.timeout, log=_log,
    )
    return _print_chief_summary(summary)


def _detext(args) -> int:
    """Under ``--workers N`` this process only launches N copies of the job (minus the flag):
    TF collective workers, or Horovod ranks with ``--launcher horovod``."""
    job = DetextJobSpec.from_args(args)
    if job.workers is not None:
        return _launch_copies(job, horovod=job.launcher == "horovod")
    from gdmix.jobs.detext import run_detext_job

    summary = run_detext_job(job.load_config(), job.coordinate, job.output, offsets=job.offsets,
                             validation_offsets=job.validation_offsets, index_maps=job.index_maps,
                             warm_start=job.warm_start, log=_log)
    return _print_chief_summary(summary)


def _print_chief_summary(summary: dict) -> int:
    """A distributed job's summary, printed by its chief only (every worker returns it)."""
    if summary.get("chief", True):
        print(to_json({k: v for k, v in summary.items() if k != "chief"}), end="", flush=True)
    return 0


def _prep(args) -> int:
    from gdmix.prep.submit import prep

    return prep(PrepJobSpec.from_args(args))


def _offsets(args) -> int:
    from gdmix.config import load_config
    from gdmix.prep.offsets import join_offsets

    summary = join_offsets(load_config(args.config, args.overrides), args.coordinate, args.scores, args.output,
                           log=_log)
    print(to_json(summary), end="")
    return 0


def _train_random_effect(args) -> int:
    job = RandomEffectJobSpec.from_args(args)
    if job.workers is not None:
        return _launch_copies(job)
    from gdmix.jobs.random_effect import train_partitions

    summary = train_partitions(job.load_config(), job.coordinate, job.partitions, job.output, offsets=job.offsets,
                               warm_start=job.warm_start, log=_log)
    print(to_json(summary), end="", flush=True)
    return 0


def _launch_copies(job: FixedEffectJobSpec | DetextJobSpec | RandomEffectJobSpec, horovod: bool = False) -> int:
    """Run ``job`` as ``--workers`` local processes (each told its place by TF_CONFIG, or as
    ``horovodrun``'s ranks), every one of them the job without its launch options."""
    from gdmix.distributed.launcher import launch_horovod, launch_local

    if job.workers < 1:
        raise GdmixError(f"--workers must be at least 1, got {job.workers}")
    argv = gdmix_command(job.for_one_worker().to_argv())
    return launch_horovod(argv, job.workers) if horovod else launch_local(argv, job.workers)


def _pipeline_compile(args) -> int:
    import os

    from gdmix_pipelines.gdmix_pipeline import compile_pipeline

    for variable, value in (("GDMIX_IMAGE_REGISTRY", args.registry), ("GDMIX_IMAGE_TAG", args.tag)):
        if value:
            os.environ[variable] = value  # read by gdmix.images.image() while the pipeline is built
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"pipeline.backend={args.backend}")
    if args.name:
        overrides.append(f"pipeline.name={args.name}")
    print(compile_pipeline(args.config, args.output, overrides))
    return 0


def _pipeline_run(args) -> int:
    return _run_pipeline_locally(Path(args.config).read_text(), args.overrides, args.workdir, args.data_root,
                                 args.runner, args.verbose)


def _run_pipeline_locally(config_text: str, overrides: list[str], workdir: str | None, data_root: str = "",
                          runner: str = "subprocess", verbose: bool = False) -> int:
    import tempfile

    from gdmix.console import print_summary
    from gdmix_pipelines.run import run_local

    workdir = workdir or tempfile.mkdtemp(prefix="gdmix-pipeline-")
    log_file = None if verbose else str(Path(workdir) / "pipeline.log")
    metrics = run_local(config_text, overrides, workdir=workdir, data_root=data_root, runner=runner,
                        log_file=log_file)
    print_summary(metrics["coordinates"])
    print(f"outputs written to {metrics['output']}")
    return 0


def _pipeline_submit(args) -> int:
    import os

    from gdmix_pipelines.run import KfpAuth, submit

    auth = KfpAuth(namespace=args.namespace, existing_token=args.token or os.environ.get("KFP_TOKEN"),
                   token_path=args.token_path, cookies=args.cookies or os.environ.get("KFP_COOKIES"),
                   ssl_ca_cert=args.ssl_ca_cert, ui_host=args.ui_host)
    result = submit(Path(args.config).read_text(), args.host, args.overrides, experiment=args.experiment,
                    data_root=args.data_root, train_data=args.train_data, validation_data=args.validation_data,
                    test_data=args.test_data,
                    wait=args.wait, auth=auth, version=args.version_name,
                    log=lambda line: print(line, file=sys.stderr))
    print(to_json(result), end="")
    return 0


def _score(args) -> int:
    from gdmix.scoring import score_dataset

    summary = score_dataset(args.model_dir, args.data, args.out, args.posterior, args.sample_seed, args.form)
    print(to_json(summary), end="")
    return 0


def _export_model(args) -> int:
    from gdmix.models.photon_transfer import export_model

    print(to_json(export_model(args.model_dir, args.out, args.form, files=args.files, log=_log)), end="")
    return 0


def _import_model(args) -> int:
    from gdmix.config import load_config
    from gdmix.models.photon_transfer import import_model

    if args.overrides and not args.config:
        raise GdmixError("--set needs --config (it overrides the configuration's values)")
    config = load_config(args.config, args.overrides) if args.config else None
    print(to_json(import_model(args.path, args.out, config, args.form, log=_log)), end="")
    return 0


def _evaluate(args) -> int:
    from gdmix.evaluation.score_files import evaluate_scores

    print(to_json(evaluate_scores(args.scores, args.label, args.score, args.weight)), end="")
    return 0


def _movielens(args) -> int:
    from gdmix.example_data.movielens import build_movielens_100k

    summary = build_movielens_100k(args.out, source=args.source, seed=args.seed, test_fraction=args.test_fraction,
                                   test_seed=args.test_seed)
    print(to_json(summary), end="")
    return 0


def _parse_entities(text: str) -> dict[str, int]:
    entities = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise GdmixError(f"--entities expects COLUMN=COUNT items, got '{item}'")
        entities[name] = int(count)
    return entities


def _synthetic(args) -> int:
    from gdmix.example_data.synthetic import generate_synthetic, write_synthetic

    data = generate_synthetic(
        args.rows, _parse_entities(args.entities), global_features=args.global_features,
        global_nnz=args.global_nnz, re_features=args.re_features, re_nnz=args.re_nnz, skew=args.skew,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction, seed=args.seed,
    )
    paths = write_synthetic(args.out, data)
    print(to_json(paths), end="")
    return 0


def _demo(args) -> int:
    """The MovieLens-100K example as a pipeline run through kfp.local; ``--in-process`` runs
    ``gdmix train`` on it instead. Only when MovieLens cannot be fetched because the network is
    unreachable (:class:`~gdmix.errors.DatasetUnavailable`) does it run on synthetic data, with a
    warning on stderr; any other error stops the demo with a non-zero status."""
    from gdmix.config import load_config_text
    from gdmix.example_data.movielens import build_movielens_100k
    from gdmix.errors import DatasetUnavailable
    from gdmix.console import ConsoleReporter

    reporter = ConsoleReporter()
    workdir = Path(args.workdir).resolve()
    data_dir = workdir / "movielens-100k"
    overrides = [f"output={workdir / 'model'}"]
    text = Path(args.config).read_text()
    try:
        if not (data_dir / "train").exists():
            reporter.info("building MovieLens-100K (fetched at run time, never stored in the repository)")
            build_movielens_100k(str(data_dir))
        overrides += [f"data.train={data_dir / 'train'}", f"data.validation={data_dir / 'validation'}"]
    except DatasetUnavailable as exc:
        print(f"WARNING: MovieLens-100K could not be fetched, the network is unreachable ({exc}).\n"
              "WARNING: the demo runs on SYNTHETIC data instead: its metrics are not MovieLens results.",
              file=sys.stderr, flush=True)
        text = _synthetic_demo_config(workdir)
    overrides += list(args.overrides)
    if args.in_process:
        return _run_training(load_config_text(text, overrides, source="demo"))
    reporter.info("running the GDMix pipeline with kfp.local (each step a local process)")
    return _run_pipeline_locally(text, overrides, str(workdir / "pipeline-root"))


def _synthetic_demo_config(workdir: Path) -> str:
    import yaml

    from gdmix.example_data.synthetic import generate_synthetic, write_synthetic

    data_dir = workdir / "synthetic"
    rows = DEMO_SYNTHETIC_ROWS
    write_synthetic(str(data_dir), generate_synthetic(rows, {"user_id": rows // 50, "item_id": rows // 200}, seed=0))
    return yaml.safe_dump({
        "data": {"train": str(data_dir / "train"), "validation": str(data_dir / "validation")},
        "output": str(workdir / "model"),
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
            {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user_id"},
            {"name": "per_item", "type": "random_effect", "entity": "item_id", "feature_bag": "per_item_id"},
        ],
    }, sort_keys=False)

if __name__ == "__main__":
    sys.exit(main())
