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
