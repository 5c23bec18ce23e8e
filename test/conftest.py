"""Fixtures shared by every tier (helpers live in kvmtestlib)."""
from kvmtestlib import cluster_defaults, model_mod, seed_pillar  # noqa: F401  (fixtures)

import collections  # noqa: E402
import os  # noqa: E402

# run-tests.sh names this file and prints it; other runs (a developer's, the mutants')
# write nothing there.
MODULE_TIMES = os.environ.get("KVMCLUSTER_MODULE_TIMES")
_times = collections.OrderedDict()


def pytest_runtest_logreport(report):
    """Wall time per test module, fixtures (lab bring-up and teardown) included."""
    module = report.nodeid.split("::")[0]
    _times[module] = _times.get(module, 0.0) + report.duration


def pytest_sessionfinish(session):  # noqa: ARG001
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
    if not MODULE_TIMES:
        return
    with open(MODULE_TIMES, "a", encoding="utf-8") as fh:
        for module, seconds in _times.items():
            fh.write(f"{seconds:8.1f}s  {module}\n")


# ---- no test writes outside its temporary roots ------------------------------------------
# The fast tiers' tests run product code as root on the developer's machine: a default path
# bound at import (/etc/sudoers.d, /etc/pki/qemu ...) that a test forgot to point elsewhere
# would change that machine. Every write this process makes while a unit or functional test
# runs (open for writing, mkdir, rename, remove, chmod, chown, links) must land in pytest's
# temporary directory or in one the test made with tempfile; anything else fails the test.
# What child processes write is not seen here (the lab tier runs them on its own nodes).
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# Hypothesis keeps a cache (its Unicode tables) under .hypothesis in the working directory:
# here, a temporary directory of this session's, removed at its end.
_SESSION_TMP = tempfile.mkdtemp(prefix="kvmcluster-test-")
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(_SESSION_TMP, "hypothesis")

GUARDED = ("test/unit/", "test/functional/")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# event -> the indexes of its arguments that are paths written to
_PATH_ARGS = {"os.mkdir": (0,), "os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,),
              "os.chmod": (0,), "os.chown": (0,), "os.symlink": (1,), "os.link": (1,),
              "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
              "shutil.copyfile": (1,), "shutil.move": (0, 1)}
_guard = {"on": False, "roots": [], "hits": []}


def _written(event, args):
    if event == "open":
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS:
            return [path]
        return []
    return [args[i] for i in _PATH_ARGS.get(event, ()) if i < len(args)]


def _audit(event, args):
    if not _guard["on"]:
        return
    if event in ("tempfile.mkdtemp", "tempfile.mkstemp"):
        _guard["roots"].append(os.fsdecode(args[0]))
        return
    for path in _written(event, args):
        if not isinstance(path, (str, bytes, os.PathLike)):
            continue  # a descriptor: opened (and checked) before
        path = os.fsdecode(os.fspath(path))
        if not os.path.isabs(path):
            continue  # relative to a directory descriptor the test opened in its root
        path = os.path.normpath(path)
        if path == os.devnull or "/__pycache__/" in path:
            continue
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in _guard["roots"]):
            _guard["hits"].append(f"{event} {path}")


sys.addaudithook(_audit)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _writes_stay_in_temporary_roots(request, tmp_path_factory):
    if not request.node.nodeid.startswith(GUARDED):
        yield
        return
    _guard.update(on=True, roots=[str(tmp_path_factory.getbasetemp()), _SESSION_TMP], hits=[])
    try:
        yield
    finally:
        _guard["on"] = False
    hits = sorted(set(_guard["hits"]))
    if hits:
        pytest.fail("wrote outside its temporary roots: " + "; ".join(hits[:10]),
                    pytrace=False)
