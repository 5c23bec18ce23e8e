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
