"""Light pipeline steps start light: no TensorFlow, no pyspark (issue 13).

Every KFP step is a fresh process (a pod in a cluster, a subprocess under kfp.local), so what a
step imports is paid on every task: TensorFlow costs seconds, pyspark starts nothing by itself but
pulls py4j and its SQL layer. Only the fixed-effect launchers' workers need TensorFlow (the
launcher itself only starts them) and only ``prepare`` needs Spark. Each light step's body imports
are run as the KFP executor runs them (``_KFP_RUNTIME=true``, away from the repository) and the
process's ``sys.modules`` is checked.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "pyspark", "torch")
#: the steps that may load nothing heavy; the fixed-effect launchers start TF workers, prepare runs Spark
LIGHT_STEPS = ("evaluate", "export_model", "export_photon_model", "import_photon_model", "random_effect",
               "random_effect_plan", "score", "update_scores")
#: the launchers: TF in their workers only, Spark in prepare's own process (local backend)
LAUNCHERS_WITHOUT_TENSORFLOW = ("fixed_effect", "prepare")


def _body_imports(step: str) -> list[str]:
    """The import statements of a component's body (what its embedded source runs)."""
    tree = ast.parse((ROOT / "components" / step / "component.py").read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == step]
    assert functions, f"components/{step}/component.py has no function {step}"
    return [ast.unparse(n) for n in ast.walk(functions[0]) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _loaded_after(statements: list[str], cwd: Path) -> list[str]:
    """The heavy modules a fresh KFP-runtime process holds after ``statements``."""
    probe = "\n".join(["import sys", "import kfp.dsl.executor_main", *statements,
                       f"print(__import__('json').dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"])
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=dict(os.environ, _KFP_RUNTIME="true"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("step", LIGHT_STEPS)
def test_light_steps_import_neither_tensorflow_nor_spark(step, tmp_path):
    assert _loaded_after(_body_imports(step), tmp_path) == []


@pytest.mark.parametrize("step", LAUNCHERS_WITHOUT_TENSORFLOW)
def test_launchers_leave_tensorflow_to_their_workers(step, tmp_path):
    """The fixed-effect launcher only starts its workers; prepare imports pyspark when it runs
    Spark, not at import."""
    assert _loaded_after(_body_imports(step) + ["import gdmix_components._runtime"], tmp_path) == []


def test_every_step_is_classified():
    """A new component is listed here as light, or as a launcher, on purpose."""
    steps = {path.parent.name for path in (ROOT / "components").glob("*/component.py")}
    assert steps == set(LIGHT_STEPS) | set(LAUNCHERS_WITHOUT_TENSORFLOW) | {"detext"}
