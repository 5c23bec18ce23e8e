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
    if not MODULE_TIMES:
        return
    with open(MODULE_TIMES, "a", encoding="utf-8") as fh:
        for module, seconds in _times.items():
            fh.write(f"{seconds:8.1f}s  {module}\n")
