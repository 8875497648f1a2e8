"""``gdmix demo`` falls back to synthetic data only when MovieLens cannot be fetched for lack of
network, says so on stderr, and fails on every other error (no MovieLens data is used here)."""

from __future__ import annotations

import json
import subprocess

import pytest

from gdmix import cli
from gdmix.example_data import movielens
from gdmix.errors import DatasetUnavailable, DataError, GdmixError

PIP_OFFLINE = (
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f>: "
    "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/recbole/\n"
    "ERROR: Could not find a version that satisfies the requirement recbole==1.2.1 (from versions: none)\n"
    "ERROR: No matching distribution found for recbole==1.2.1\n"
)
PIP_NO_SUCH_VERSION = (
    "ERROR: Could not find a version that satisfies the requirement recbole==1.2.1 (from versions: 1.1.1, 1.2.0)\n"
    "ERROR: No matching distribution found for recbole==1.2.1\n"
)


def _pip_exits_with(stderr: str):
    def run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", stderr)

    return run


def test_fetch_says_network_failure_only_when_the_index_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens.subprocess, "run", _pip_exits_with(PIP_OFFLINE))
    with pytest.raises(DatasetUnavailable, match="could not be reached.*Temporary failure in name resolution"):
        movielens.fetch_recbole_wheel(str(tmp_path / "a"))
    monkeypatch.setattr(movielens.subprocess, "run", _pip_exits_with(PIP_NO_SUCH_VERSION))
    with pytest.raises(GdmixError, match="No matching distribution") as info:
        movielens.fetch_recbole_wheel(str(tmp_path / "b"))
    assert not isinstance(info.value, DatasetUnavailable)


def _demo(tmp_path, monkeypatch, capsys, failure: Exception) -> tuple[int, str]:
    def fetch(cache_dir=None):
        raise failure

    monkeypatch.setattr(movielens, "fetch_recbole_wheel", fetch)
    monkeypatch.setattr(cli, "DEMO_SYNTHETIC_ROWS", 3000)  # small synthetic data, the same code path
    code = cli.main(["demo", "--workdir", str(tmp_path / "demo"), "--in-process"])
    return code, capsys.readouterr().err


def test_demo_runs_on_synthetic_data_when_the_network_is_down(tmp_path, monkeypatch, capsys):
    code, err = _demo(tmp_path, monkeypatch, capsys, DatasetUnavailable("pip: Temporary failure in name resolution"))
    assert code == 0
    assert "WARNING: MovieLens-100K could not be fetched" in err and "SYNTHETIC data" in err
    assert "Temporary failure in name resolution" in err  # the reason is shown
    metrics = json.loads((tmp_path / "demo" / "model" / "metrics.json").read_text())
    assert metrics["data"]["train"]["uri"] == str(tmp_path / "demo" / "synthetic" / "train")


@pytest.mark.parametrize("failure", [
    GdmixError("downloading MovieLens 100K failed (pip exit code 1): ERROR: No matching distribution"),
    DataError("cannot read MovieLens file (bad zip)", path="recbole-1.2.1-py3-none-any.whl"),
])
def test_demo_fails_on_any_other_error(tmp_path, monkeypatch, capsys, failure):
    code, err = _demo(tmp_path, monkeypatch, capsys, failure)
    assert code == 1
    assert "error:" in err and str(failure) in err.replace("\n", "")
    assert "SYNTHETIC" not in err
    assert not (tmp_path / "demo" / "synthetic").exists() and not (tmp_path / "demo" / "model").exists()
