"""The bridge state's contract: test=True reports the same changes as the real run, a
rolled-back change is reported as nothing changed, packages count the same both ways, and a
re-addressing is started detached so that the run reports before its session is cut."""
import copy

import pytest

from kvmtestlib import load_module, utils_dunder

state = load_module("_states", "kvmcluster_network")
UTILS = utils_dunder()
state.__utils__ = UTILS

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

    def version(self, *names):
        got = {n: "1" if n in self.have else "" for n in names}
        return got[names[0]] if len(names) == 1 else got

    def salt(self):
        return {
            "kvmcluster_model.current": lambda: VIEW,
            "kvmcluster_nettxn.pending": lambda reap=True: None,
            "kvmcluster_network.detect_backend": lambda: "ifupdown",
            "kvmcluster_network.plan": lambda me: PLAN,
            "kvmcluster_network.evaluate": lambda *a: copy.deepcopy(self.ev),
            "kvmcluster_nettxn.begin": self.begin,
            "pkg.version": self.version,
            "pkg.latest_version": lambda *names, refresh=True: {n: "1" for n in names},
            "pkg.install": lambda pkgs, refresh=True: self.install(pkgs),
        }


def run(node, test):
    state.__salt__ = node.salt()
    state.__opts__ = {"test": test}
    state.__utils__ = UTILS
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
        "packages": {"bridge-utils": {"old": None, "new": "1"}}}
    assert node.begun == []


def test_a_rolled_back_change_reports_nothing_changed():
    outcome = {"phase": "rolled-back", "id": "t2",
               "detail": "local check failed: br0 does not hold 172.30.10.41/24"}
    got = run(Node(evaluation(), outcome, ("ifupdown", "bridge-utils")), test=False)
    assert got["result"] is False and got["changes"] == {}
    assert "the previous configuration is back" in got["comment"]
    got = run(Node(evaluation(), outcome), test=False)
    assert got["changes"] == {"packages": {"bridge-utils": {"old": None, "new": "1"}}}


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


def test_a_pending_transaction_stops_the_run():
    node = Node(evaluation(), CONFIRMED, ("ifupdown", "bridge-utils"))
    salt = node.salt()
    salt["kvmcluster_nettxn.pending"] = lambda reap=True: {"id": "t9", "phase": "applied",
                                                           "deadline": 0}
    state.__salt__, state.__opts__ = salt, {"test": False}
    got = state.bridged("bridge")
    assert got["result"] is False and got["changes"] == {} and node.begun == []
    assert got["comment"].startswith("network transaction t9 is applied and not confirmed")


def test_an_unmanaged_bridge_is_left_alone():
    node = Node(evaluation(), CONFIRMED)
    salt = node.salt()
    salt["kvmcluster_model.current"] = lambda: dict(VIEW, network=dict(VIEW["network"],
                                                                       manage=False))
    state.__salt__, state.__opts__ = salt, {"test": False}
    got = state.bridged("bridge")
    assert got == {"name": "bridge", "changes": {}, "result": True,
                   "comment": "the bridge is not managed here (kvmcluster:network:manage is "
                              "false)"}


def test_a_transaction_that_cannot_start_changes_nothing_but_packages():
    node = Node(evaluation(), CONFIRMED)

    def refuse(spec, wait=True, delay=0):
        raise RuntimeError("the boot-time rollback is not installed")

    salt = node.salt()
    salt["kvmcluster_nettxn.begin"] = refuse
    state.__salt__, state.__opts__ = salt, {"test": False}
    got = state.bridged("bridge", packages={"ifupdown": ["ifupdown", "bridge-utils"]})
    assert got["result"] is False
    assert got["changes"] == {"packages": {"bridge-utils": {"old": None, "new": "1"}}}
    assert got["comment"] == ("network transaction not started: the boot-time rollback is "
                              "not installed")


def test_an_evaluation_error_is_the_result_and_changes_nothing_under_test():
    node = Node(evaluation(), CONFIRMED)
    salt = node.salt()

    def bad(*a):
        raise RuntimeError("[kvm01] kvmcluster:network:rollback_timeout: 10s is shorter")

    salt["kvmcluster_network.evaluate"] = bad
    for test in (True, False):
        state.__salt__, state.__opts__ = salt, {"test": test}
        got = state.bridged("bridge", packages={"ifupdown": ["ifupdown", "bridge-utils"]})
        assert got["result"] is False and "rollback_timeout" in got["comment"]
        assert got["changes"] == ({} if test else
                                  {"packages": {"bridge-utils": {"old": None, "new": "1"}}})


def test_the_comment_lists_what_moves():
    lines = state._effect_lines({"plan": PLAN, "effect": {
        "addresses": [{"address": "a/24", "from": "eth0", "to": "br0"},
                      {"address": "b/24", "from": None, "to": None}],
        "default_route": {"old": [], "new": ["via g dev br0"]},
        "default_route6": {"old": ["via g6 dev eth0"], "new": ["via g6 dev br0"]},
        "bridge_mac": {"old": None, "new": "52:54:00:00:00:01"},
        "routes": ["10.99.0.0/24 via g: eth0 -> br0"],
        "management_session": {"address": "a", "interface": "eth0", "touched": False,
                               "kept": False}}})
    assert lines == ["address a/24: eth0 -> br0", "address b/24: nowhere -> removed",
                     "default route: none -> via g dev br0",
                     "br0 MAC: new -> 52:54:00:00:00:01",
                     "route 10.99.0.0/24 via g: eth0 -> br0",
                     "IPv6 default route: via g6 dev eth0 -> via g6 dev br0",
                     "management session on a (eth0): not touched, ADDRESS GOES AWAY"]


@pytest.mark.parametrize("test", [True, False])
def test_boot_guard_state(test):
    calls = []

    def guard(install=False):
        calls.append(install)
        return {"installed": install, "enabled": install}

    state.__salt__ = {"kvmcluster_nettxn.boot_guard": guard,
                      "kvmcluster_model.current": lambda: VIEW}
    state.__opts__ = {"test": test}
    got = state.boot_guard("boot-guard")
    assert got["changes"] == {"installed": {"old": False, "new": True},
                              "enabled": {"old": False, "new": True}}
    assert got["result"] is (None if test else True)
    assert calls == ([False] if test else [False, True])
    state.__salt__ = {"kvmcluster_nettxn.boot_guard": lambda install=False: {
        "installed": True, "enabled": True}, "kvmcluster_model.current": lambda: VIEW}
    assert state.boot_guard("boot-guard")["changes"] == {}


def test_libvirt_network_follows_its_bridge():
    net = {"exists": False}
    salt = {"kvmcluster_model.current": lambda: dict(VIEW, self=dict(ME, bridge={"name": "br0"}),
                                                     network=dict(VIEW["network"],
                                                                  libvirt_network="host-bridge")),
            "kvmcluster_network.libvirt_network": lambda name, bridge, define=False: dict(net),
            "kvmcluster_network.runtime": lambda: {"links": {"eth0": {}}}}
    state.__salt__, state.__opts__ = salt, {"test": True}
    predicted = state.libvirt_network("libvirt-network")
    assert predicted["result"] is None and predicted["changes"]["exists"] == {
        "old": False, "new": True}
    state.__opts__ = {"test": False}
    got = state.libvirt_network("libvirt-network")
    assert got["result"] is False and got["changes"] == {}
    assert got["comment"] == "libvirt network host-bridge not started: bridge br0 does not exist"
