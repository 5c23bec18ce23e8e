"""The bridge state's contract: test=True reports the same changes as the real run, a
rolled-back change is reported as nothing changed, packages count the same both ways, and a
re-addressing is started detached so that the run reports before its session is cut."""
import copy

import pytest

from kvmtestlib import load_module

state = load_module("_states", "kvmcluster_network")

ME = {"name": "kvm01", "backend": "ifupdown", "address": "172.30.10.41/24"}
VIEW = {"self": ME, "network": {"manage": True, "rollback_timeout": 90, "confirm": "auto",
                                "check": {"gateway": "arp"}}}
PLAN = {"address": "172.30.10.41/24", "bridge": {"name": "br0"},
        "port": {"name": "eth0", "kind": "nic"}}


def evaluation(kept=True, risk="disruptive"):
    by = "node" if kept else "management"
    return {
        "risk": risk, "files": {"/etc/network/interfaces.d/kvmcluster": "+auto br0\n"},
        "runtime_missing": ["br0 is not a bridge here"], "guests": [], "plan": PLAN,
        "effect": {"addresses": [{"address": "172.30.10.41/24", "from": "eth0", "to": "br0"}],
                   "management_session": {"address": "172.30.10.41", "interface": "eth0",
                                          "touched": True, "kept": kept},
                   "confirmation": {"by": by, "why": "because"}},
        "spec": {"id": "spec"},
    }


class Node:
    def __init__(self, ev, outcome, have=("ifupdown",)):
        self.ev, self.outcome, self.have = ev, outcome, set(have)
        self.begun = []

    def begin(self, spec, wait=True, delay=0):
        self.begun.append({"wait": wait, "delay": delay})
        return dict(self.outcome)

    def install(self, pkgs):
        self.have.update(pkgs)
        return {p: {"old": "", "new": "1"} for p in [*pkgs, "a-dependency"]}

    def salt(self):
        return {
            "kvmcluster_model.current": lambda: VIEW,
            "kvmcluster_nettxn.pending": lambda: None,
            "kvmcluster_network.detect_backend": lambda: "ifupdown",
            "kvmcluster_network.plan": lambda me: PLAN,
            "kvmcluster_network.evaluate": lambda *a: copy.deepcopy(self.ev),
            "kvmcluster_nettxn.begin": self.begin,
            "pkg.list_pkgs": lambda: {p: "1" for p in self.have},
            "pkg.install": lambda pkgs: self.install(pkgs),
        }


def run(node, test):
    state.__salt__ = node.salt()
    state.__opts__ = {"test": test}
    return state.bridged("bridge", packages={"ifupdown": ["ifupdown", "bridge-utils"]})


CONFIRMED = {"phase": "confirmed", "id": "t1", "detail": "confirmed by the node itself: ok"}


@pytest.mark.parametrize("have", [("ifupdown",), ("ifupdown", "bridge-utils")])
def test_test_mode_reports_exactly_the_real_changes(have):
    predicted = run(Node(evaluation(), CONFIRMED, have), test=True)
    real = run(Node(evaluation(), CONFIRMED, have), test=False)
    assert predicted["result"] is None and real["result"] is True
    assert predicted["changes"] == real["changes"]
    assert real["changes"]["runtime"]["confirmation"]["by"] == "node"
    assert "confirmed by the node itself" in real["comment"]


def test_only_packages_missing_is_a_change_both_ways():
    predicted = run(Node(evaluation(risk="no-op"), CONFIRMED), test=True)
    node = Node(evaluation(risk="no-op"), CONFIRMED)
    real = run(node, test=False)
    assert predicted["result"] is None
    assert predicted["changes"] == real["changes"] == {
        "packages": {"old": [], "new": ["bridge-utils"]}}
    assert node.begun == []


def test_a_rolled_back_change_reports_nothing_changed():
    outcome = {"phase": "rolled-back", "id": "t2",
               "detail": "local check failed: br0 does not hold 172.30.10.41/24"}
    got = run(Node(evaluation(), outcome, ("ifupdown", "bridge-utils")), test=False)
    assert got["result"] is False and got["changes"] == {}
    assert "the previous configuration is back" in got["comment"]
    got = run(Node(evaluation(), outcome), test=False)
    assert got["changes"] == {"packages": {"old": [], "new": ["bridge-utils"]}}


def test_when_the_node_cannot_prove_the_path_it_waits_and_says_so():
    outcome = {"phase": "applied", "id": "t3", "deadline": 0,
               "detail": "not confirmed by the node itself: management peer silent"}
    got = run(Node(evaluation(), outcome, ("ifupdown", "bridge-utils")), test=False)
    assert got["result"] is True
    assert got["changes"]["runtime"]["confirmation"] == {"by": "management",
                                                         "why": outcome["detail"]}
    assert "Confirm from the management node within 90s" in got["comment"]


def test_readdressing_is_started_detached_and_reported_first():
    node = Node(evaluation(kept=False), {"phase": "armed", "id": "t4"},
                ("ifupdown", "bridge-utils"))
    got = run(node, test=False)
    assert node.begun == [{"wait": False, "delay": state.READDRESS_DELAY}]
    assert got["result"] is True and got["comment"].startswith("re-addressing: br0 takes over")
    predicted = run(Node(evaluation(kept=False), {}, ("ifupdown", "bridge-utils")), test=True)
    assert predicted["changes"] == got["changes"]


def test_guests_on_the_bridge_refuse_a_disruptive_change():
    ev = evaluation()
    ev["guests"] = ["vnet7"]
    node = Node(ev, CONFIRMED, ("ifupdown", "bridge-utils"))
    got = run(node, test=False)
    assert got["result"] is False and node.begun == []
    assert "guests are attached to it (vnet7)" in got["comment"]
