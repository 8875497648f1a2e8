"""Native TensorFlow ops of gdmix, compiled on first use against the installed TensorFlow.

The fused logistic loss/gradient kernel (``logistic_loss_op.cc``) is a TensorFlow custom op.
It is built once per TensorFlow version and source hash into ``$GDMIX_CACHE/ops`` (default
``~/.cache/gdmix/ops``) with the C++ compiler and flags TensorFlow reports, then loaded with
``tf.load_op_library``. Where no compiler is available (or ``GDMIX_NATIVE=0``) callers fall
back to pure TensorFlow ops, which give the same results more slowly.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from gdmix.tf_runtime import import_tensorflow

SOURCE = Path(__file__).resolve().parent / "logistic_loss_op.cc"


def cache_root() -> Path:
    return Path(os.environ.get("GDMIX_CACHE", Path.home() / ".cache" / "gdmix")) / "ops"


def _arch_flags() -> list[str]:
    """Portable x86-64 levels: v3 (AVX2, FMA) where the CPU has them, else v2."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return ["-march=x86-64-v3"] if (" avx2" in flags and " fma" in flags) else ["-march=x86-64-v2"]


def compile_into(target: Path, source: Path, compiler: str, flags: list[str], libraries: list[str],
                 timeout: float = 600) -> None:
    """``compiler flags source -o target libraries``, atomically: built under a temporary name and
    moved into place (concurrent workers may build at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        done = subprocess.run([compiler, *flags, str(source), "-o", str(temporary), *libraries],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {source.name} failed:\n{done.stderr[-2000:]}")
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def build_library(target: Path) -> None:
    """Compile the op into ``target``."""
    tf = import_tensorflow()
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    compile_into(target, SOURCE, compiler, ["-O3", *_arch_flags(), "-w", "-shared", "-fPIC"],
                 [*tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()])


def library_path() -> Path:
    tf = import_tensorflow()
    key = hashlib.sha256(SOURCE.read_bytes() + tf.__version__.encode() + " ".join(_arch_flags()).encode())
    return cache_root() / f"logistic_loss_op-{tf.__version__}-{key.hexdigest()[:16]}.so"


@functools.cache
def logistic_loss_op():
    """The loaded op module, or None (with one warning) when it cannot be built or is disabled."""
    if os.environ.get("GDMIX_NATIVE", "1") == "0":
        return None
    tf = import_tensorflow()
    path = library_path()
    try:
        if not path.exists():
            build_library(path)
        return tf.load_op_library(str(path))
    except Exception as exc:  # any build or load problem: fall back, loudly
        warnings.warn(f"gdmix native op unavailable, using slower pure-TensorFlow kernels: {exc}",
                      RuntimeWarning, stacklevel=2)
        return None
