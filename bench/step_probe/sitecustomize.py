"""Per-process timing probe for ``bench.pipeline_steps`` (only on PYTHONPATH while that benchmark runs).

Python imports ``sitecustomize`` at start-up; with ``GDMIX_STEP_PROBE_DIR`` set, this one records,
for every Python process of a pipeline run (kfp.local's task processes and the fixed effect's
TF workers), where its wall time went, and writes it to ``<dir>/<pid>.json`` at exit:

* ``started``: the process's start (``/proc/self/stat``, 10 ms ticks) and ``probe``: when the
  interpreter reached site (interpreter start-up before any import of ours);
* ``import_seconds``: time spent in outermost imports (``importlib._bootstrap._find_and_load``
  wrapped, nested imports counted once), split into before and during the component's body;
* ``body``: start and end of the KFP component function (``kfp.dsl.executor.Executor.execute``
  wrapped), so start-up = process start -> body start, plus the imports made inside the body;
* ``heavy``: which of tensorflow / pyspark / torch the process had loaded when it ended.

The probe never changes what a process does; without the variable it does nothing.
"""

import os
import sys
import time

_DIR = os.environ.get("GDMIX_STEP_PROBE_DIR")


def _process_start() -> float:
    """Epoch seconds at which this process started (from /proc, against the uptime clock)."""
    with open("/proc/self/stat") as handle:
        ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def _install() -> None:
    import atexit
    import json

    import _frozen_importlib as bootstrap

    record = {"pid": os.getpid(), "started": _process_start(), "probe": time.time(),
              "import_seconds": 0.0, "import_seconds_in_body": 0.0, "body": None}
    state = {"depth": 0, "in_body": False}
    original = bootstrap._find_and_load

    def timed_find_and_load(name, import_):
        """The outermost import's wall time (nested imports are inside it)."""
        if state["depth"]:
            return _load(name, import_)
        tic = time.perf_counter()
        try:
            return _load(name, import_)
        finally:
            spent = time.perf_counter() - tic
            record["import_seconds"] += spent
            if state["in_body"]:
                record["import_seconds_in_body"] += spent

    def _load(name, import_):
        state["depth"] += 1
        try:
            module = original(name, import_)
        finally:
            state["depth"] -= 1
        if name == "kfp.dsl.executor":
            _wrap_executor(module)
        return module

    def _wrap_executor(module):
        execute = module.Executor.execute

        def timed_execute(self, *args, **kwargs):
            state["in_body"] = True
            record["function"] = getattr(self.func, "__name__", None)
            record["output_file"] = self.executor_output_path if hasattr(self, "executor_output_path") else None
            start = time.time()
            try:
                return execute(self, *args, **kwargs)
            finally:
                record["body"] = [start, time.time()]
                state["in_body"] = False

        module.Executor.execute = timed_execute

    def write():
        times = os.times()
        record.update(ended=time.time(), argv=sys.argv, tf_worker="TF_CONFIG" in os.environ,
                      cpu_seconds=times.user + times.system,
                      children_cpu_seconds=times.children_user + times.children_system,
                      heavy=sorted(m for m in ("tensorflow", "pyspark", "torch") if m in sys.modules))
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as handle:
            json.dump(record, handle)

    bootstrap._find_and_load = timed_find_and_load
    atexit.register(write)


if _DIR:
    _install()
