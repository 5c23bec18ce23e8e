"""The runner's own answers: a target that matches nothing, helpers not synced."""
from kvmtestlib import formula_values, load_module

safe = load_module("_utils", "kvmcluster_safe")
runner = load_module("_runners", "kvmcluster")


def test_status_with_a_target_that_matches_nothing_fails(monkeypatch, capsys):
    monkeypatch.setattr(runner, "_ssh_targets", lambda tgt, tgt_type: [])
    monkeypatch.setattr(runner, "_parameters", lambda: formula_values())
    runner.__utils__ = {"kvmcluster_safe.withhold": safe.withhold,
                        "kvmcluster_cluster.findings": lambda *a: [],
                        "kvmcluster_cluster.table": lambda *a: ""}
    runner.__opts__ = {"output": None}
    runner.__context__ = {}
    out = runner.status(tgt="kvm9*", ssh=True)
    assert out["retcode"] == 1 and runner.__context__["retcode"] == 1
    assert out["error"] == ("target 'kvm9*' (glob) matches no node of the roster; nothing "
                            "was asked")
    assert capsys.readouterr().out.startswith("kvmcluster.status: target 'kvm9*'")


def test_status_without_its_helpers_says_what_to_sync(monkeypatch, capsys):
    runner.__utils__ = {}
    runner.__opts__ = {"output": None}
    runner.__context__ = {}
    out = runner.status(ssh=True)
    assert out["retcode"] == 1
    assert "helpers are not loaded (kvmcluster_cluster.findings)" in out["error"]
    assert "saltutil.sync_all" in out["error"]


def test_through_a_master_the_runner_sends_no_pillar_at_all(monkeypatch):
    """Master mode: the minions compile their own pillar; the runner's calls for status and
    for each step of a migration carry the formula's defaults only."""
    import json

    sent = []
    monkeypatch.setattr(runner, "_parameters", lambda: formula_values())
    monkeypatch.setattr(runner, "_call", lambda fun, tgt, tt, ssh, timeout, arg, kwarg: (
        sent.append((fun, ssh, kwarg)) or ({tgt: {"node": tgt}}, {})))
    runner._call_model("kvmcluster_report.node", "*", "glob", ssh=False)
    runner._one("kvmcluster_migration.plan", "kvm01", False, 60, arg=["vm1"])
    assert [s[0] for s in sent] == ["kvmcluster_report.node", "kvmcluster_migration.plan"]
    for fun, ssh, kwarg in sent:
        assert ssh is False and sorted(kwarg) == ["parameters"], (fun, sorted(kwarg))
        assert json.loads(kwarg["parameters"]) == formula_values()


def test_a_long_migration_prints_its_progress(monkeypatch, capsys):
    """While the migration call runs, a line every interval: data sent and remaining."""
    import threading

    release = threading.Event()
    polls = []

    def fake_one(fun, node, ssh, timeout, arg=(), kwarg=None):
        assert fun == "kvmcluster_migration.progress" and node == "kvm01" and arg == ["web1"]
        polls.append(fun)
        if len(polls) == 3:
            release.set()
        return {"vm": "web1", "active": True, "time_elapsed": 900 * len(polls),
                "data_total": 2 << 30, "data_processed": len(polls) << 29,
                "data_remaining": (2 << 30) - (len(polls) << 29),
                "memory_remaining": 100 << 20, "disk_remaining": 300 << 20,
                "memory_bps": 30 << 20, "disk_bps": 10 << 20}

    def work():
        assert release.wait(10), "no progress was asked for"
        return {"vm": "web1", "downtime_ms": 80}

    monkeypatch.setattr(runner, "_one", fake_one)
    out = runner._with_progress("web1", "kvm01", "kvm02", False, 0.05, work)
    assert out == {"vm": "web1", "downtime_ms": 80}
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("migrating")]
    assert len(lines) >= 2, lines
    assert lines[0].startswith("migrating web1 kvm01 -> kvm02: 0s, sent 512 MiB of 2,048 MiB, "
                               "1,536 MiB remaining (memory 100 MiB, disk 300 MiB), "
                               "40.0 MiB/s"), lines[0]
    # An error of the work is raised as it was; progress 0 prints nothing.
    def failing():
        raise runner.CommandExecutionError("migration failed")
    try:
        runner._with_progress("web1", "kvm01", "kvm02", False, 0, failing)
    except runner.CommandExecutionError as exc:
        assert str(exc) == "migration failed"
    else:
        raise AssertionError("the work's error was lost")
    assert capsys.readouterr().err == ""


def test_progress_line_says_when_no_job_runs():
    line = runner.progress_line("web1", "kvm01", "kvm02", {"active": False}, 4.2)
    assert line == "migrating web1 kvm01 -> kvm02: 4s, no job running on kvm01 (starting or " \
                   "finishing)"
    assert "no progress from kvm01: boom" in runner.progress_line("web1", "kvm01", "kvm02",
                                                                  "boom", 1)


def test_the_migration_call_sees_the_loaders_context(monkeypatch):
    """Salt's loader keeps __opts__ and the other dunders in a context variable: the
    migration call, which runs in a worker thread, must see the caller's."""
    import contextvars

    loader = contextvars.ContextVar("loader", default=None)
    loader.set("the runner's loader")
    monkeypatch.setattr(runner, "_one", lambda *a, **k: {"active": False})
    seen = runner._with_progress("web1", "kvm01", "kvm02", False, 0.01,
                                 lambda: {"loader": loader.get()})
    assert seen == {"loader": "the runner's loader"}


def test_a_migration_with_a_bad_bandwidth_is_refused_before_any_node_is_asked(monkeypatch):
    monkeypatch.setattr(runner, "_where", lambda *a: (_ for _ in ()).throw(AssertionError(
        "a node was asked")))
    runner.__context__ = {}
    for bad in ("fast", -5, 100001, True):
        out = runner.migrate("web1", "kvm02", bandwidth=bad)
        assert out["retcode"] == 1 and out["refused"][0].endswith("give MiB/s, 1-100000"), out
    for bad in ("often", -1, 3601, True):
        out = runner.migrate("web1", "kvm02", progress=bad)
        assert out["retcode"] == 1 and out["refused"][0].endswith("0-3600 (0: none)"), out
    line = runner.progress_line("web1", "kvm01", "kvm02", {"active": False, "here": False}, 3)
    assert line == "migrating web1 kvm01 -> kvm02: 3s, no job running on kvm01 (gone from kvm01)"
    line = runner.progress_line("web1", "kvm01", "kvm02", {"active": True, "data_total": 0,
                                                           "data_processed": 0}, 2)
    assert line == "migrating web1 kvm01 -> kvm02: 2s, starting (nothing sent yet)"
