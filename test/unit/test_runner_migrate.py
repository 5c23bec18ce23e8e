"""The runner's ``migrate`` called as the operator calls it, over a fake cluster: the nodes'
migration answers are recorded stand-ins (libvirt's test driver cannot migrate), their
certificate side is the real ``kvmcluster_pki`` module with files under tmp_path. What is
checked is the runner's own order and refusals: nothing moves before the checks and both
nodes' certificates are good, and what a failed move made on the target is removed."""
import copy
import os

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module, runner_over, utils_dunder

model = load_module("_modules", "kvmcluster_model")
runner = load_module("_runners", "kvmcluster")

PILLAR = copy.deepcopy(SEED_PILLAR["kvmcluster"])
BUILT, ERRORS = model.build(PILLAR, formula_values()["cluster"])
assert not ERRORS, ERRORS


class Cluster:
    """kvm01 runs web1; answers per function; every call recorded."""

    def __init__(self, tmp_path, plaintext=False, fail=None):
        self.calls, self.fail, self.where = [], fail or set(), "kvm01"
        self.pki = {}
        for node in ("kvm01", "kvm02"):
            mod = load_module("_modules", "kvmcluster_pki")
            mod.__utils__ = utils_dunder()
            mod.__grains__ = {"id": node}
            view = copy.deepcopy(model.node_view(BUILT, node))
            view["migration"]["plaintext"] = plaintext
            mod.__salt__ = {"kvmcluster_model.current": lambda v=view: copy.deepcopy(v)}
            mod._where = lambda n=node: str(tmp_path / n / "etc" / "pki" / "qemu")
            (tmp_path / node / "etc").mkdir(parents=True)
            mod._qemu_gid = lambda conf=None: os.getgid()
            self.pki[node] = mod

    def answer(self, fun, node, arg, kwarg):
        self.calls.append((fun, node))
        if (fun, node) in self.fail:
            raise runner.CommandExecutionError(f"{node}: {fun}: failed")
        if fun == "kvmcluster_vm.list":
            return {"web1": {"state": "running"}} if node == self.where else {}
        if fun == "kvmcluster_pki.request":
            return self.pki[node].request()
        if fun == "kvmcluster_pki.install":
            return self.pki[node].install(**kwarg)
        if fun == "kvmcluster_migration.plan":
            return {"vm": "web1", "disks": [{"target": "vda",
                                             "path": "/data01/primary/web1.qcow2"}]}
        if fun == "kvmcluster_migration.check":
            return {"ok": True, "reasons": [], "copy": ["vda"], "node": node}
        if fun == "kvmcluster_migration.prepare":
            return {"made": ["/data01/primary/web1.qcow2"]}
        if fun == "kvmcluster_migration.migrate":
            self.where = arg[1]
            return {"vm": "web1", "from": node, "to": arg[1], "seconds": 3.1,
                    "downtime_ms": 120, "copied": ["vda"]}
        if fun == "kvmcluster_migration.source_cleanup":
            return {"deleted": ["/data01/primary/web1.qcow2"], "kept": {}}
        if fun == "kvmcluster_migration.unprepare":
            return {"deleted": list(arg[1:])}
        raise AssertionError(f"unexpected call {fun} on {node}")

    def install(self, monkeypatch, tmp_path):
        def call(fun, tgt, tgt_type, ssh, timeout, arg=(), kwarg=None):
            nodes = ["kvm01", "kvm02"] if tgt == "*" else ([tgt] if isinstance(tgt, str)
                                                            else list(tgt))
            got, lost = {}, {}
            for n in nodes:
                try:
                    got[n] = self.answer(fun, n, list(arg), dict(kwarg or {}))
                except runner.CommandExecutionError as exc:
                    lost[n] = str(exc)
            return got, lost

        runner_over(runner, monkeypatch, tmp_path, call, call)
        return self


def _funs(cluster, *names):
    return [c for c in cluster.calls if c[0].split(".")[1] in names]


def test_a_migration_moves_only_after_checks_and_certificates(tmp_path, monkeypatch):
    cl = Cluster(tmp_path).install(monkeypatch, tmp_path)
    out = runner.migrate("web1", "kvm02", progress=0)
    assert out["migrated"] and out["retcode"] == 0, out
    assert out["certificates"] == {"kvm01": "issued: no certificate yet",
                                   "kvm02": "issued: no certificate yet"}
    order = [c[0].split(".")[1] for c in cl.calls if c[0] != "kvmcluster_vm.list"]
    assert order == ["plan", "check", "request", "request", "install", "install", "prepare",
                     "migrate", "source_cleanup"], order
    # A second move finds both certificates good: nothing installed.
    cl.calls.clear()
    back = runner.migrate("web1", "kvm01", progress=0)
    assert back["migrated"] and back["certificates"] == {"kvm01": "kept", "kvm02": "kept"}
    assert not _funs(cl, "install")


def test_a_node_whose_certificate_cannot_be_made_good_stops_the_move(tmp_path, monkeypatch):
    cl = Cluster(tmp_path, fail={("kvmcluster_pki.install", "kvm02")}).install(monkeypatch,
                                                                                tmp_path)
    out = runner.migrate("web1", "kvm02", progress=0)
    assert not out["migrated"] and out["retcode"] == 1
    assert out["refused"] == ["kvm02: migration certificate: its certificate was not "
                              "installed: kvm02: kvmcluster_pki.install: failed"], out
    assert not _funs(cl, "prepare", "migrate"), cl.calls


def test_check_only_issues_nothing(tmp_path, monkeypatch):
    cl = Cluster(tmp_path).install(monkeypatch, tmp_path)
    out = runner.migrate("web1", "kvm02", check_only=True, progress=0)
    assert out["certificates"] == {"kvm01": "would issue: no certificate yet",
                                   "kvm02": "would issue: no certificate yet"}, out
    assert not _funs(cl, "install", "prepare", "migrate")
    assert not (tmp_path / "master" / "kvmcluster-ca").exists()


def test_plaintext_moves_without_certificates_and_says_so(tmp_path, monkeypatch):
    cl = Cluster(tmp_path, plaintext=True,
                 fail={("kvmcluster_pki.install", "kvm02")}).install(monkeypatch, tmp_path)
    out = runner.migrate("web1", "kvm02", progress=0)
    assert out["migrated"], out
    assert out["certificates"] == "migration:plaintext is true: the stream goes in clear"
    assert _funs(cl, "migrate")


def test_a_failed_move_removes_what_it_made_on_the_target(tmp_path, monkeypatch):
    cl = Cluster(tmp_path, fail={("kvmcluster_migration.migrate", "kvm01")}).install(
        monkeypatch, tmp_path)
    out = runner.migrate("web1", "kvm02", progress=0)
    assert not out["migrated"] and out["retcode"] == 1
    assert "failed" in out["error"]
    assert ("kvmcluster_migration.unprepare", "kvm02") in cl.calls
    assert cl.where == "kvm01"


@pytest.mark.parametrize("vm_on, why", [
    ({"kvm01", "kvm02"}, "runs on kvm01, kvm02: resolve that first"),
    (set(), "runs on no node that answered"),
])
def test_a_vm_on_two_nodes_or_none_is_refused_before_anything(tmp_path, monkeypatch, vm_on,
                                                               why):
    cl = Cluster(tmp_path).install(monkeypatch, tmp_path)
    orig = cl.answer

    def answer(fun, node, arg, kwarg):
        if fun == "kvmcluster_vm.list":
            cl.calls.append((fun, node))
            return {"web1": {"state": "running"}} if node in vm_on else {}
        return orig(fun, node, arg, kwarg)

    cl.answer = answer
    out = runner.migrate("web1", "kvm02", progress=0)
    assert out["retcode"] == 1 and why in out["refused"][0], out
    assert [c[0] for c in cl.calls] == ["kvmcluster_vm.list"] * 2
