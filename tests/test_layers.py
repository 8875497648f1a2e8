"""How the code is laid out; the import checks read the source with ``ast`` (nothing is imported).

* The CLI is the top layer: only ``gdmix/cli.py`` and ``gdmix/__main__.py`` (``python -m gdmix``)
  may import ``gdmix.cli``. What another entry point needs from it (error reporting, ``--set``,
  progress lines) lives in a lower module (``gdmix.command_line``).
* ``gdmix/solvers`` imports nothing else from gdmix but the losses it minimises (``gdmix.losses``).

Also: the two fixed-effect launcher components (``fixed_effect``, ``detext``) share one body,
``gdmix_components._runtime.fixed_effect_launcher``, which each calls with its own parameters in order;
every component body's imports work in the KFP executor's run-time mode; the example configs have
one source, ``gdmix/examples`` (package data), which the top-level ``examples`` links to.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gdmix"
CLI_USERS = {"gdmix/cli.py", "gdmix/__main__.py"}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package_dir: Path = PACKAGE) -> set[str]:
    """Every module ``path`` imports (at any depth, functions included), relative imports resolved;
    ``from a import b`` counts as ``a`` and ``a.b`` (``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    modules = {str(p.relative_to(PACKAGE.parent)): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
    assert len(modules) > 50, f"found only {len(modules)} modules under {PACKAGE}"
    return modules


def _is(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def test_only_the_entry_points_import_the_cli():
    offenders = {path: sorted(m for m in imported if _is(m, "gdmix.cli"))
                 for path, imported in _modules().items() if path not in CLI_USERS}
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"modules below the CLI import it (move what they use into a lower module): {offenders}"


def test_solvers_import_nothing_from_gdmix_but_the_losses():
    solvers = {path: imported for path, imported in _modules().items() if path.startswith("gdmix/solvers/")}
    assert solvers, "no modules under gdmix/solvers"
    offenders = {path: sorted(m for m in imported if _is(m, "gdmix") and not _is(m, "gdmix.solvers")
                              and not _is(m, "gdmix.losses"))
                 for path, imported in solvers.items()}
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"gdmix/solvers must import nothing from gdmix but gdmix.losses: {offenders}"


def test_the_import_reader_sees_relative_and_nested_imports(tmp_path):
    """The reader itself: a relative import and one inside a function both count."""
    pkg = tmp_path / "gdmix" / "prep"
    pkg.mkdir(parents=True)
    (pkg / "submit.py").write_text("def main():\n    from ..cli import main\n    import gdmix.cli\n")
    assert {"gdmix.cli", "gdmix.cli.main"} <= _imports(pkg / "submit.py", tmp_path / "gdmix")


@pytest.mark.parametrize("stage", ["fixed_effect", "detext"])
def test_fixed_effect_launchers_pass_their_parameters_to_the_shared_body(stage):
    import importlib

    from gdmix_components._runtime import fixed_effect_launcher
    from gdmix_components._shared import IN_POD

    component = getattr(importlib.import_module(f"gdmix_components.{stage}.component"), stage)
    for variant in (component, getattr(component, IN_POD)):
        func = variant.python_func
        params = list(inspect.signature(func).parameters)
        assert params == list(inspect.signature(fixed_effect_launcher).parameters)
        body = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0].body
        calls = [n for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
        assert len(calls) == 1 and calls[0].value.func.id == "fixed_effect_launcher"
        assert [a.id for a in calls[0].value.args] == params and not calls[0].value.keywords


def test_component_bodies_import_where_components_run(tmp_path):
    """A component's embedded source holds only its function, so its body imports what it uses;
    the KFP executor runs it with ``_KFP_RUNTIME=true``, where ``kfp.dsl`` lacks its compile-time
    API (a body importing ``gdmix_components._shared``, which needs ``dsl.TaskConfigPassthrough``,
    fails there). Every body's imports, run in that mode, away from the repository (as in an
    image, where only the installed names exist)."""
    imports = set()
    for path in sorted((ROOT / "components").glob("*/component.py")):
        for func in (n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)):
            imports.update(ast.unparse(n) for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom)))
    assert "from gdmix_components._runtime import fixed_effect_launcher" in imports
    done = subprocess.run([sys.executable, "-c", "\n".join(sorted(imports))], cwd=tmp_path,
                          env=dict(os.environ, _KFP_RUNTIME="true"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_kubeflow_code_is_imported_by_its_installed_names():
    """``components/`` and ``pipelines/`` install as ``gdmix_components`` and ``gdmix_pipelines``
    (pyproject.toml's package-dir): the bare folder names would collide with other distributions'
    top-level packages, and resolve only from the repository root, never in an image. No Python
    file may import them (``import``, ``from``, ``importlib.import_module`` strings) and no
    Makefile, script or document may run them (``python -m pipelines...``)."""
    import re

    bare = ("components", "pipelines")
    run_bare = re.compile(r"-m\s+(?:components|pipelines)\b")

    def imported(source: str) -> list[str]:
        names = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.append(node.module or "")
            elif isinstance(node, ast.Call) and node.args and "import_module" in ast.unparse(node.func):
                first = node.args[0]  # a constant, or an f-string whose first part names the package
                head = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
                names.append(head.value if isinstance(head, ast.Constant) else "")
        return [name for name in names if name.split(".")[0] in bare]

    # the reader itself catches every form
    sample = "import pipelines.run\nfrom components.evaluate import component\nimport_module(f'components.{s}')"
    assert imported(sample) == ["pipelines.run", "components.evaluate", "components."]
    assert imported("from gdmix_components import _runtime\nimport_module('gdmix_pipelines.run')") == []

    skip = {".git", ".venv", "build", "demo-output", "__pycache__", ".pytest_cache", "upstream"}
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            relative = path.relative_to(ROOT)
            if name.endswith(".py"):
                offenders += [f"{relative}: imports {m}" for m in imported(path.read_text())]
            elif name in ("Makefile", "Dockerfile", "run") or name.endswith((".sh", ".md")):
                offenders += [f"{relative}: runs {m.group()}" for m in run_bare.finditer(path.read_text())]
    assert not offenders, "use gdmix_components / gdmix_pipelines:\n" + "\n".join(offenders)


def test_examples_have_one_source_shipped_as_package_data():
    """``examples/`` (README, bench/) is a relative link to ``gdmix/examples`` (``gdmix demo``,
    compile_all, kind-e2e.sh), whose every file the package data ships."""
    link = ROOT / "examples"
    assert link.is_symlink() and os.readlink(link) == "gdmix/examples", "examples/ must link to gdmix/examples"
    files = sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "examples").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    assert "examples/movielens-100k/lr.yaml" in files
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gdmix"]
    assert [f for f in files if not any(PurePosixPath(f).match(pattern) for pattern in patterns)] == []


#: The README's "Architecture" table, bottom layer first: a module may import its own layer and
#: the layers below it. Keys are module paths relative to gdmix/ (a package covers its modules).
LAYERS = [
    ("data, utils", {"errors", "io", "features", "config", "metrics", "console", "dataset", "sparse", "layout", "memory",
                     "tf_runtime", "images", "command_line", "__init__"}),
    ("numerics", {"losses", "solvers", "native"}),
    ("models", {"models", "distributed", "artifacts"}),
    ("runs", {"game", "ledger", "jobs", "prep", "scoring", "evaluation", "kube", "example_data"}),
    ("steps", {"stages"}),
    ("entry points", {"cli", "__main__", "prep/submit"}),
]


def _layer_of(module: str) -> int:
    """Index in LAYERS of a dotted gdmix module name (``gdmix.prep.submit`` -> entry points)."""
    parts = module.split(".")[1:] or ["__init__"]
    for key in ("/".join(parts[:2]), parts[0]):
        for index, (_, members) in enumerate(LAYERS):
            if key in members:
                return index
    raise AssertionError(f"{module} is in no layer of the README's architecture table")


def test_every_module_imports_only_its_own_layer_and_those_below():
    violations = []
    for path, imported in _modules().items():
        own = _layer_of(_module_name(PACKAGE.parent / path))
        for module in sorted(imported):
            if module.split(".")[0] != "gdmix" or module == "gdmix":
                continue
            try:
                layer = _layer_of(module)
            except AssertionError:
                continue  # ``from gdmix.x import name``: the name, not a module, was recorded
            if layer > own:
                violations.append(f"{path} ({LAYERS[own][0]}) imports {module} ({LAYERS[layer][0]})")
    assert not violations, "imports that run up the layers:\n" + "\n".join(violations)
