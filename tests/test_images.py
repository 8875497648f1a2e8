"""The container images: docker/Dockerfile's structure, the build and push scripts, and the built images.

Offline tests (always run): the Dockerfile has the Horovod build stage and assembles every shipped
image from the clean ``runtime`` stage with ``COPY --from`` (only build stages see ca-bundle.crt);
the classic-builder stage cut; the Makefile passes REGISTRY/TAG on to images, push and compile;
the scripts parse; the layer checker catches a ca-bundle.crt and its whiteout (a fake ``docker save``);
the spark entry point's command lines (dry run, on this machine's pyspark and java).

Image tests need a Docker daemon (``DOCKER_HOST``) holding the images::

    eval "$(docker/start-dockerd.sh)"
    make images

Without them they are skipped, unless ``GDMIX_CONTAINER_TESTS=1`` (CI sets it): then they fail.
"""


import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import tomllib
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gdmix.images import ROLES, image
from rehearsal.dockerenv import tar_bytes

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
DOCKERFILE = (DOCKER_DIR / "Dockerfile").read_text()
REQUIRED = os.environ.get("GDMIX_CONTAINER_TESTS") == "1"
PYTHON = sys.executable


def _load(name: str):
    """A docker/*.py script as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), DOCKER_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cutter = _load("dockerfile-for-target")
checker = _load("check-image-layers")


def _stages() -> dict[str, tuple[str, str]]:
    """{stage: (base, text)} of docker/Dockerfile."""
    _, stages = cutter.stages(DOCKERFILE)
    return {name: (base, "".join(lines)) for name, base, lines in stages}


def _chain(stage: str) -> list[str]:
    """The FROM ancestry of a stage, itself first (its layers are the image's layers)."""
    stages = _stages()
    chain = [stage]
    while stages[chain[-1]][0] in stages:
        chain.append(stages[chain[-1]][0])
    return chain


# --- offline: the Dockerfile ----------------------------------------------------------------------


def test_every_role_is_a_target_and_build_stages_are_named_build():
    stages = _stages()
    for role in ROLES:
        assert role in stages, role
    assert {"runtime", "build-venv", "build-tensorflow", "build-horovod", "build-spark", "build-launcher"} <= set(stages)


def test_only_build_stages_see_the_ca_bundle_and_shipped_images_copy_their_venv():
    stages = _stages()
    holders = [name for name, (_, text) in stages.items() if "ca-bundle.crt" in _instructions(text)]
    assert holders == ["build-venv"]
    for role in ROLES:
        chain = _chain(role)
        assert chain[-1] == "runtime" and stages["runtime"][0] == "${base_image}", chain
        assert not [s for s in chain if s.startswith("build-")], f"{role} is built on a build stage: {chain}"
        text = "".join(_instructions(stages[s][1]) for s in chain)
        assert "ca-bundle.crt" not in text
        assert re.search(r"^COPY --from=build-[a-z]+ /opt/venv /opt/venv$", text, re.M), role
        # the shipped stages install local files only (pip offline in install-gdmix.sh package/horovod)
        runs = re.findall(r"sh /opt/gdmix-build/install-gdmix\.sh (\S+)", text)
        assert set(runs) <= {"package", "horovod"}, (role, runs)


def test_detext_gets_horovod_from_its_build_stage():
    stages = _stages()
    base, text = stages["build-horovod"]
    assert base == "build-tensorflow"  # built against the very TensorFlow detext ships
    assert "install-gdmix.sh horovod-dist" in text
    detext = "".join(_instructions(stages[s][1]) for s in _chain("detext"))
    assert "COPY --from=build-horovod /opt/horovod-dist/ /opt/gdmix-build/horovod/" in detext
    assert "install-gdmix.sh horovod\n" in detext
    assert 'io.gdmix.horovod="0.28.1"' in detext
    # the recipe of scripts/horovod/build-wheel.sh, whose source it runs
    script = (DOCKER_DIR / "install-gdmix.sh").read_text()
    assert "horovod-scripts/build-wheel.sh" in script and "cmake g++ make" in script
    recipe = (REPO / "scripts" / "horovod" / "build-wheel.sh").read_text()
    assert "--no-build-isolation" in recipe and "xla_mpi_ops.cc" in recipe and "HOROVOD_WITH_GLOO=1" in recipe
    assert 'pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION"' in recipe


def test_spark_image_entrypoint_is_tini_and_the_k8s_entry_point():
    text = _stages()["spark"][1]
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/opt/gdmix/bin/spark-entrypoint.sh"]' in text
    assert "COPY spark-entrypoint.sh /opt/gdmix/bin/spark-entrypoint.sh" in text
    assert "USER 1000:1000" in text


@pytest.mark.parametrize("role", ROLES)
def test_cut_dockerfile_keeps_the_needed_stages_verbatim(role):
    cut = cutter.cut(DOCKERFILE, role)
    _, kept = cutter.stages(cut)
    names = [name for name, _, _ in kept]
    assert names[-1] == role and "runtime" in names
    if role in ("spark", "launcher"):
        assert not {"build-tensorflow", "build-horovod", "tensorflow"} & set(names), names
    if role == "detext":
        assert "build-horovod" in names and "build-spark" not in names
    full = _stages()
    for name, _, lines in kept:  # the same instructions: the same layer cache
        assert "".join(lines) == full[name][1]
    assert cut.startswith("#") and "ARG BASE_IMAGE=" in cut.split("FROM", 1)[0]


def _instructions(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.lstrip().startswith("#"))


# --- offline: Makefile, scripts, names -------------------------------------------------------------


def test_makefile_passes_registry_and_tag_to_images_push_and_compile():
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "images", "push", "compile",
                          "REGISTRY=registry.example.com/ml", "TAG=1.2.3"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    env = "GDMIX_IMAGE_REGISTRY=registry.example.com/ml GDMIX_IMAGE_TAG=1.2.3"
    lines = {cmd: [line for line in out.splitlines() if cmd in line]
             for cmd in ("docker/build-images.sh", "docker/push-images.sh", "-m gdmix_pipelines.compile_all")}
    for cmd, found in lines.items():
        assert len(found) == 1 and found[0].startswith(env), (cmd, out)
    plain = subprocess.run(["make", "-n", "-o", ".venv/.installed", "images"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    assert "GDMIX_IMAGE_" not in plain  # no REGISTRY/TAG: the environment's (or the defaults) apply


def test_the_wheel_lists_every_package():
    """pyproject.toml lists the wheel's packages (its package-dir installs components/ and
    pipelines/ as gdmix_components and gdmix_pipelines, which packages.find cannot name): a package
    folder missing from the list would be missing from the wheel, so from every image, while
    still importable in the editable install the other tests use."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"gdmix": "gdmix", **setuptools["package-dir"]}
    found = {".".join((name, *init.parent.relative_to(REPO / folder).parts))
             for name, folder in folders.items() for init in (REPO / folder).rglob("__init__.py")}
    assert {"gdmix_components", "gdmix_components.evaluate", "gdmix_pipelines"} <= found
    assert sorted(found - set(setuptools["packages"])) == [], "add these to pyproject.toml's packages"


def test_scripts_parse():
    for script in ("build-images.sh", "push-images.sh", "spark-entrypoint.sh", "start-dockerd.sh"):
        subprocess.run(["bash", "-n", str(DOCKER_DIR / script)], check=True)
    subprocess.run(["sh", "-n", str(DOCKER_DIR / "install-gdmix.sh")], check=True)
    for script in ("build-images.sh", "push-images.sh", "spark-entrypoint.sh", "check-image-layers.py",
                   "dockerfile-for-target.py"):
        assert os.access(DOCKER_DIR / script, os.X_OK), script


def test_push_needs_a_real_registry():
    for registry in ("", "localhost"):
        env = dict(os.environ, GDMIX_IMAGE_REGISTRY=registry, PYTHON=PYTHON)
        done = subprocess.run([str(DOCKER_DIR / "push-images.sh")], env=env, capture_output=True, text=True)
        assert done.returncode == 1 and "registry" in done.stderr.lower(), done.stderr


def test_image_names_follow_registry_and_tag(monkeypatch):
    from gdmix import __version__

    monkeypatch.delenv("GDMIX_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("GDMIX_IMAGE_TAG", raising=False)
    assert image("trainer") == f"localhost/gdmix-trainer:{__version__}"
    monkeypatch.setenv("GDMIX_IMAGE_REGISTRY", "127.0.0.1:5000/team/")
    monkeypatch.setenv("GDMIX_IMAGE_TAG", "rc-1")
    assert [image(r) for r in ROLES] == [f"127.0.0.1:5000/team/gdmix-{r}:rc-1" for r in ROLES]
    monkeypatch.setenv("GDMIX_IMAGE_REGISTRY", "")  # empty = unset (make passes nothing then)
    monkeypatch.setenv("GDMIX_IMAGE_TAG", "")
    assert image("spark") == f"localhost/gdmix-spark:{__version__}"
    for key, bad in (("GDMIX_IMAGE_TAG", "a:b"), ("GDMIX_IMAGE_REGISTRY", "Reg.io/Upper"), ("GDMIX_IMAGE_TAG", "-x")):
        monkeypatch.setenv(key, bad)
        with pytest.raises(ValueError, match=key):
            image("spark")
        monkeypatch.delenv(key)


# --- offline: the layer checker, on a fake `docker save` -------------------------------------------


def _fake_docker(tmp_path: Path, layers: list[dict[str, bytes]], history: list[str]) -> dict[str, str]:
    save = {"manifest.json": b"[]", "abc.json": b"{}"}
    for i, layer in enumerate(layers):
        save[f"l{i}/layer.tar"] = tar_bytes(layer)
        save[f"l{i}/json"] = b"{}"
    (tmp_path / "save.tar").write_bytes(tar_bytes(save))
    (tmp_path / "history.txt").write_text("".join(json.dumps(h) + "\n" for h in history))
    fake = tmp_path / "docker"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in
        save) cat {tmp_path}/save.tar ;;
        history) cat {tmp_path}/history.txt ;;
        *) exit 2 ;;
        esac
        """))
    fake.chmod(0o755)
    return dict(os.environ, DOCKER=str(fake))


def _check(env) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(DOCKER_DIR / "check-image-layers.py"), "some/image:1"], env=env,
                          capture_output=True, text=True)


def test_layer_check_passes_a_clean_image(tmp_path):
    env = _fake_docker(tmp_path, [{"etc/ssl/certs/ca-certificates.crt": b"x"}, {"opt/venv/bin/python": b"y"}],
                       ["COPY dir:abc in /opt/venv", "RUN sh install-gdmix.sh package"])
    done = _check(env)
    assert done.returncode == 0 and "OK, no ca-bundle.crt in any of 2 layers" in done.stdout, done.stderr


@pytest.mark.parametrize("where", ["file", "whiteout", "history"])
def test_layer_check_finds_the_ca_bundle_in_any_layer(tmp_path, where):
    layers = [{"usr/bin/x": b""}, {"opt/gdmix-build/dist/gdmix.whl": b""}]
    history = ["RUN true"]
    if where == "file":  # in an early layer, removed later: still in the image
        layers[0]["opt/gdmix-build/ca-bundle.crt"] = b"-----BEGIN CERTIFICATE-----"
    elif where == "whiteout":
        layers[1]["opt/gdmix-build/.wh.ca-bundle.crt"] = b""
    else:
        history.append("COPY multi:123 in /opt/gdmix-build/ ca-bundle.crt")
    done = _check(_fake_docker(tmp_path, layers, history))
    assert done.returncode == 1 and "ca-bundle.crt found" in done.stderr, (done.stdout, done.stderr)


# --- offline: the spark entry point's command lines (this machine's pyspark and java) --------------


def _entrypoint(args: list[str], **env) -> list[str]:
    if shutil.which("java") is None:
        pytest.skip("no java on this machine")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_")}
    base["PATH"] = f"{Path(PYTHON).parent}:{base.get('PATH', '')}"
    done = subprocess.run([str(DOCKER_DIR / "spark-entrypoint.sh"), *args],
                          env=dict(base, GDMIX_SPARK_ENTRYPOINT_DRY_RUN="1", **env),
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


EXECUTOR_ENV = {
    "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@gdmix-prep-driver-svc.ns.svc:7078",
    "SPARK_EXECUTOR_ID": "3", "SPARK_EXECUTOR_CORES": "2", "SPARK_EXECUTOR_MEMORY": "1024m",
    "SPARK_APPLICATION_ID": "spark-0123abcd", "SPARK_EXECUTOR_POD_IP": "10.1.2.3",
    "SPARK_EXECUTOR_POD_NAME": "gdmix-prep-exec-3", "SPARK_RESOURCE_PROFILE_ID": "0",
    "SPARK_CONF_DIR": "/opt/spark/conf", "SPARK_CLASSPATH": "/extra/a.jar",
    # SPARK_JAVA_OPT_<n>: in the order of n, not of the names
    "SPARK_JAVA_OPT_10": "-Dspark.driver.port=7078", "SPARK_JAVA_OPT_2": "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "SPARK_JAVA_OPT_0": "-Dlog4j.configurationFile=a b.properties",
}


def _check_executor_command(cmd: list[str], spark_home: str) -> None:
    assert cmd[0].endswith("/bin/java")
    main = cmd.index("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
    assert cmd[1:main] == ["-Dlog4j.configurationFile=a b.properties", "--add-opens=java.base/java.nio=ALL-UNNAMED",
                           "-Dspark.driver.port=7078", "-Xms1024m", "-Xmx1024m",
                           "-cp", f"/opt/spark/conf:/extra/a.jar:{spark_home}/jars/*"]
    assert cmd[main + 1:] == ["--driver-url", EXECUTOR_ENV["SPARK_DRIVER_URL"], "--executor-id", "3",
                              "--cores", "2", "--app-id", "spark-0123abcd", "--hostname", "10.1.2.3",
                              "--resourceProfileId", "0", "--podName", "gdmix-prep-exec-3"]


def _pyspark_home() -> str:
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def test_entrypoint_executor_command_line():
    _check_executor_command(_entrypoint(["executor"], **EXECUTOR_ENV), _pyspark_home())


def test_entrypoint_driver_command_line_and_passthrough():
    args = ["--properties-file", "/opt/spark/conf/spark.properties", "--class", "org.apache.spark.deploy.PythonRunner",
            "local:///opt/venv/lib/python3.11/site-packages/gdmix/prep_submit.py", "s3://b/config.yaml", "--set", "x=1"]
    cmd = _entrypoint(["driver", *args], SPARK_DRIVER_BIND_ADDRESS="10.1.2.4")
    assert cmd == [f"{_pyspark_home()}/bin/spark-submit", "--deploy-mode", "client",
                   "--conf", "spark.driver.bindAddress=10.1.2.4", *args]
    assert _entrypoint(["python3", "-c", "print(1)"]) == ["python3", "-c", "print(1)"]
    missing = subprocess.run([str(DOCKER_DIR / "spark-entrypoint.sh"), "executor"], capture_output=True, text=True,
                             env={**{k: v for k, v in os.environ.items() if not k.startswith("SPARK_")},
                                  "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '')}"})
    assert missing.returncode == 64 and "SPARK_DRIVER_URL is not set" in missing.stderr


# --- image tests ------------------------------------------------------------------------------------


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"GDMIX_CONTAINER_TESTS=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set GDMIX_CONTAINER_TESTS=1 to make this a failure)")


def _docker(*args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def daemon():
    if shutil.which("docker") is None:
        _unavailable("no docker CLI")
    try:
        _docker("version", "--format", "{{.Server.Version}}", timeout=30)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"no Docker daemon answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}: {exc}); "
                     'start one with: eval "$(docker/start-dockerd.sh)"')


def _built(role: str) -> str:
    tag = image(role)
    if _docker("image", "inspect", tag, check=False, timeout=30).returncode != 0:
        _unavailable(f"image {tag} is not built; build it with: IMAGES={role} make images")
    return tag


@pytest.fixture(scope="module")
def spark_image(daemon):
    return _built("spark")


@pytest.fixture(scope="module")
def detext_image(daemon):
    return _built("detext")


def _restricted(*args: str) -> list[str]:
    """docker run as a PSA-restricted pod would: non-root, no capabilities, no privilege escalation."""
    return ["run", "--rm", "--user", "1000:1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *args]


@pytest.mark.parametrize("role", ROLES)
def test_no_layer_of_the_image_holds_the_ca_bundle(daemon, role):
    tag = _built(role)
    done = subprocess.run([PYTHON, str(DOCKER_DIR / "check-image-layers.py"), tag], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{tag}: OK, no ca-bundle.crt in any of" in done.stdout
    config = json.loads(_docker("image", "inspect", tag).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Labels"]["io.gdmix.role"] == role


@pytest.mark.parametrize("role", ROLES)
def test_images_hold_the_kubeflow_code_under_its_installed_names(daemon, role):
    """Component bodies import ``gdmix_components._runtime``; the bare ``components`` and
    ``pipelines`` must not be installed (a stale setuptools build/ tree once put them in the wheel)."""
    probe = ("import importlib.util, gdmix_components._runtime, gdmix_pipelines; "
             "print([n for n in ('components', 'pipelines') if importlib.util.find_spec(n)])")
    out = _docker(*_restricted("--entrypoint", "python3", _built(role), "-c", probe), timeout=120).stdout
    assert out.strip() == "[]", out


def test_layer_check_catches_a_real_image_that_removed_the_bundle_later(daemon, tmp_path):
    """A single-stage build that COPYs the bundle and deletes it in a later step (what the images did)."""
    (tmp_path / "ca-bundle.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY ca-bundle.crt /opt/gdmix-build/ca-bundle.crt\n"
                                         "COPY Dockerfile /opt/other\n")
    tag = f"localhost/gdmix-layer-check-test:{uuid.uuid4().hex[:8]}"
    _docker("build", "-q", "-t", tag, str(tmp_path), env=dict(os.environ, DOCKER_BUILDKIT="0"))
    try:
        done = subprocess.run([PYTHON, str(DOCKER_DIR / "check-image-layers.py"), tag], capture_output=True, text=True)
        assert done.returncode == 1 and "/opt/gdmix-build/ca-bundle.crt" in done.stderr, done.stderr
    finally:
        _docker("rmi", "-f", tag, check=False)


SPARK_APP = textwrap.dedent("""\
    import os, sys
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    conf = spark.sparkContext.getConf()
    total = spark.range(1, 101).groupBy().sum("id").collect()[0][0]
    print("RESULT", total, sys.argv[1:], conf.get("spark.master"), conf.get("spark.submit.deployMode"),
          conf.get("spark.driver.bindAddress"), conf.get("spark.app.name"), sys.executable, flush=True)
    spark.stop()
    """)


def test_spark_driver_pod_runs_a_pyspark_app(spark_image, tmp_path):
    """The container args and env the Kubernetes backend gives a driver pod, with master local[1]."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text(SPARK_APP)
    (tmp_path / "conf" / "spark.properties").write_text(textwrap.dedent("""\
        spark.master=local[1]
        spark.submit.deployMode=cluster
        spark.app.name=gdmix-entrypoint-test
        spark.driver.host=127.0.0.1
        spark.ui.enabled=false
        spark.kubernetes.namespace=gdmix
        """))
    for path in (tmp_path, tmp_path / "conf", tmp_path / "app"):
        path.chmod(0o755)
    done = _docker(*_restricted(
        "-v", f"{tmp_path / 'conf'}:/opt/spark/conf:ro", "-v", f"{tmp_path / 'app'}:/opt/app:ro",
        "-e", "SPARK_DRIVER_BIND_ADDRESS=127.0.0.1", "-e", "SPARK_CONF_DIR=/opt/spark/conf",
        "-e", "SPARK_LOCAL_DIRS=/tmp", "-e", "SPARK_USER=gdmix",
        # this daemon (--bridge=none) gives containers a hostname that does not resolve; a pod's does
        "-e", "SPARK_LOCAL_IP=127.0.0.1",
        spark_image,
        "driver", "--properties-file", "/opt/spark/conf/spark.properties",
        "--class", "org.apache.spark.deploy.PythonRunner", "local:///opt/app/main.py", "first", "--second=2"),
        check=False, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT 5050 ['first', '--second=2'] local[1] client 127.0.0.1 gdmix-entrypoint-test "
                      "/opt/venv/bin/python3"], done.stdout


def test_spark_executor_pod_starts_the_executor_backend(spark_image):
    """The executor branch: the command line in the image, then a real start that fails only for want of
    a driver (nothing listens on the driver URL)."""
    env = [arg for key, value in EXECUTOR_ENV.items() for arg in ("-e", f"{key}={value}")]
    dry = _docker(*_restricted(*env, "-e", "GDMIX_SPARK_ENTRYPOINT_DRY_RUN=1", spark_image, "executor"))
    cmd = dry.stdout.splitlines()
    _check_executor_command(cmd, "/opt/venv/lib/python3.11/site-packages/pyspark")
    assert cmd[0] == "/usr/lib/jvm/gdmix-java/bin/java"
    live_env = dict(EXECUTOR_ENV, SPARK_DRIVER_URL="spark://CoarseGrainedScheduler@127.0.0.1:9",
                    SPARK_EXECUTOR_POD_IP="127.0.0.1", SPARK_EXECUTOR_MEMORY="256m",
                    SPARK_JAVA_OPT_10="-Dspark.executor.driverPropsFetcher.maxAttempts=1",
                    SPARK_LOCAL_IP="127.0.0.1")  # as above: this daemon's container hostnames do not resolve
    live_env.pop("SPARK_CONF_DIR")
    live_env.pop("SPARK_JAVA_OPT_0")
    env = [arg for key, value in live_env.items() for arg in ("-e", f"{key}={value}")]
    live = _docker(*_restricted("--hostname", "localhost", *env, spark_image, "executor"), check=False, timeout=180)
    log = live.stdout + live.stderr
    assert live.returncode != 0, log[-3000:]
    assert "INFO KubernetesExecutorBackend: Started daemon" in log, log[-3000:]
    assert "Failed to connect to /127.0.0.1:9" in log, log[-3000:]  # the driver URL, where nothing listens
    assert "ClassNotFoundException" not in log and "Could not find or load main class" not in log, log[-3000:]


def test_spark_image_runs_other_commands_as_given(spark_image):
    config = json.loads(_docker("image", "inspect", spark_image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/opt/gdmix/bin/spark-entrypoint.sh"]
    done = _docker(*_restricted(spark_image, "python3", "-c",
                                "import os, pyspark, gdmix; print(os.getuid(), pyspark.__version__)"))
    assert done.stdout.split()[0] == "1000"
    # what Kubernetes does with a KFP step: `command` replaces the ENTRYPOINT
    done = _docker(*_restricted("--entrypoint", "sh", spark_image, "-c", "echo $0 $$"))
    assert done.stdout.split() == ["sh", "1"]


def test_kfp_docker_runner_runs_a_step_in_the_spark_image(spark_image, tmp_path):
    """kfp.local's DockerRunner passes a step's command as the container's arguments (the ENTRYPOINT
    stays): the entry point must run it as given."""
    from kfp import dsl, local
    from kfp.local import config as local_config

    @dsl.component(base_image=spark_image, install_kfp_package=False)
    def versions() -> str:
        import pyspark

        import gdmix

        return f"pyspark {pyspark.__version__} gdmix {gdmix.__version__}"

    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    previous = local_config.LocalExecutionConfig.instance
    try:
        local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
        task = versions()
    finally:
        local_config.LocalExecutionConfig.instance = previous
    assert task.output.startswith("pyspark 4.") and "gdmix" in task.output


def test_detext_image_has_horovodrun_with_tensorflow_and_gloo(detext_image):
    labels = json.loads(_docker("image", "inspect", detext_image).stdout)[0]["Config"]["Labels"]
    assert labels["io.gdmix.horovod"] == "0.28.1"
    assert labels["io.gdmix.horovod.source"] == "image" or labels["io.gdmix.horovod.source"].startswith("prebuilt:")
    check = _docker(*_restricted(detext_image, "horovodrun", "--check-build"), timeout=120).stdout
    assert re.search(r"\[X\] TensorFlow", check) and re.search(r"\[X\] Gloo", check), check
    tools = _docker(*_restricted(detext_image, "sh", "-c", "command -v g++ cmake gcc || true")).stdout
    assert tools.strip() == "", f"build tools in the shipped image: {tools}"


def test_detext_image_runs_two_horovod_ranks(detext_image):
    """horovodrun -np 2 with Gloo inside the image (host network: Gloo needs an interface with an address)."""
    program = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'; import tensorflow as tf, horovod.tensorflow as hvd; "
               "hvd.init(); s = hvd.allreduce(tf.constant(float(hvd.rank() + 1)), op=hvd.Sum); "
               "print('RANK', hvd.rank(), 'OF', hvd.size(), 'SUM', float(s), flush=True)")
    done = _docker(*_restricted("--network", "host", detext_image, "horovodrun", "-np", "2", "-H", "localhost:2",
                                "--gloo", "--network-interface", "lo", "python3", "-c", program),
                   check=False, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert sorted(re.findall(r"RANK (\d) OF 2 SUM 3.0", out)) == ["0", "1"], out[-4000:]


# --- push: docker/push-images.sh against a minimal registry (HTTP API v2, in this process) -----------


class _Registry(BaseHTTPRequestHandler):
    """Just enough of the registry API for `docker push`: blob uploads (monolithic or chunked) and
    manifests, with digests verified."""

    blobs: dict[str, bytes] = {}
    uploads: dict[str, bytearray] = {}
    manifests: dict[tuple[str, str], bytes] = {}
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, code: int, headers: dict[str, str] | None = None, body: bytes = b""):
        self.send_response(code)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self):
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/v2/":
            return self._reply(200, {"Content-Type": "application/json"}, b"{}")
        m = re.fullmatch(r"/v2/(.+)/(blobs|manifests)/(uploads/)?([^/]*)", path)
        if not m:
            return self._reply(404)
        name, kind, upload, ref = m.groups()
        if kind == "blobs" and upload:
            if self.command == "POST":
                self._body()
                uid = uuid.uuid4().hex
                self.uploads[uid] = bytearray()
                return self._reply(202, {"Location": f"/v2/{name}/blobs/uploads/{uid}", "Range": "0-0",
                                         "Docker-Upload-UUID": uid})
            data = self.uploads[ref]
            data += self._body()
            if self.command == "PATCH":
                return self._reply(202, {"Location": f"/v2/{name}/blobs/uploads/{ref}",
                                         "Range": f"0-{max(len(data) - 1, 0)}", "Docker-Upload-UUID": ref})
            digest = params["digest"].replace("%3A", ":")
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                return self._reply(400)
            self.blobs[digest] = bytes(data)
            return self._reply(201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})
        if kind == "blobs":
            blob = self.blobs.get(ref)
            if blob is None:
                return self._reply(404)
            return self._reply(200, {"Docker-Content-Digest": ref}, blob)
        # manifests
        if self.command == "PUT":
            body = self._body()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.manifests[(name, ref)] = body
            return self._reply(201, {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest})
        body = self.manifests.get((name, ref))
        if body is None:
            return self._reply(404)
        return self._reply(200, {"Content-Type": json.loads(body).get("mediaType", ""),
                                 "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}, body)

    do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = _route


def test_push_images_tags_and_pushes_every_role(daemon, tmp_path):
    """Images built under the default names are tagged REGISTRY/gdmix-<role>:TAG and pushed (a tiny
    imported image stands in for the four roles, under a throw-away source tag)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    src_tag = f"pushtest-{uuid.uuid4().hex[:8]}"
    registry = f"127.0.0.1:{port}/gdmix-test"
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(tar_bytes({"hello.txt": src_tag.encode()}))
    sources = [f"localhost/gdmix-{role}:{src_tag}" for role in ROLES]
    targets = [f"{registry}/gdmix-{role}:v9" for role in ROLES]
    _docker("import", str(rootfs), sources[0])
    for source in sources[1:]:
        _docker("tag", sources[0], source)
    try:
        env = dict(os.environ, GDMIX_IMAGE_REGISTRY=registry, GDMIX_IMAGE_TAG="v9", GDMIX_PUSH_FROM_TAG=src_tag,
                   PYTHON=PYTHON)
        env.pop("IMAGES", None)
        done = subprocess.run([str(DOCKER_DIR / "push-images.sh")], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert {(name, ref) for name, ref in _Registry.manifests if ref == "v9"} == \
            {(f"gdmix-test/gdmix-{role}", "v9") for role in ROLES}
        manifest = json.loads(_Registry.manifests[("gdmix-test/gdmix-trainer", "v9")])
        for blob in [manifest["config"], *manifest["layers"]]:
            assert blob["digest"] in _Registry.blobs
        for role, target in zip(ROLES, targets):  # each reported with the digest the registry got
            digest = "sha256:" + hashlib.sha256(_Registry.manifests[(f"gdmix-test/gdmix-{role}", "v9")]).hexdigest()
            assert f"{target} {digest}" in done.stderr, done.stderr
    finally:
        server.shutdown()
        _docker("rmi", "-f", *sources, *targets, check=False)
