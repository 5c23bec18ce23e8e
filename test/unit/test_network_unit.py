"""What the network module makes of a node's runtime: what is missing, what moves, the risk
class, and that a NIC named in pillar but absent stops the run before anything changes."""
import copy

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module

model = load_module("_modules", "kvmcluster_model")
render = load_module("_modules", "kvmcluster_netrender")
network = load_module("_modules", "kvmcluster_network")

BUILT, _ = model.build(SEED_PILLAR["kvmcluster"], formula_values()["cluster"])
KVM02 = model.node_view(BUILT, "kvm02")["self"]          # bond0 of eno1+eno2
MGMT = model.node_view(BUILT, "mgmt01")["self"]          # a single NIC, eth0


def link(mac, kind=None, master=None, mtu=1500, data=None):
    return {"mac": mac, "mtu": mtu, "master": master, "kind": kind, "data": data or {},
            "slave": {}, "up": True}


BEFORE = {  # mgmt01 as installed: the address on eth0
    "links": {"lo": link("00:00:00:00:00:00"), "eth0": link("52:54:00:00:00:11")},
    "addrs": {"lo": ["127.0.0.1/8"], "eth0": ["172.30.10.11/24"]},
    "routes": [{"gateway": "172.30.10.1", "dev": "eth0"}],
}
AFTER = {
    "links": {"lo": link("00:00:00:00:00:00"), "eth0": link("52:54:00:00:00:11", master="br0"),
              "br0": link("52:54:00:00:00:11", kind="bridge")},
    "addrs": {"lo": ["127.0.0.1/8"], "br0": ["172.30.10.11/24"]},
    "routes": [{"gateway": "172.30.10.1", "dev": "br0"}],
}


@pytest.fixture
def configure_loader_modules():
    return {network: {
        "__salt__": {"kvmcluster_netrender.target": render.target,
                     "kvmcluster_netrender.file_mode": render.file_mode,
                     "kvmcluster_netrender.devices_created": render.devices_created,
                     "kvmcluster_netrender.nm_keyfile_interface": render.nm_keyfile_interface},
        "__grains__": {"os_family": "Debian"}, "__opts__": {}}}


def evaluate(monkeypatch, rt, files, session="172.30.10.11"):
    monkeypatch.setattr(network, "runtime", lambda: copy.deepcopy(rt))
    monkeypatch.setattr(network, "read_files", lambda: dict(files))
    monkeypatch.setattr(network, "_read", lambda p: files.get(p))
    monkeypatch.setattr(network, "_mode", lambda p: render.file_mode(p) if p in files else None)
    monkeypatch.setattr(network, "_ifstate", lambda: {"eth0"})
    monkeypatch.setattr(network.os.path, "isfile", lambda p: False)
    monkeypatch.setenv("SSH_CONNECTION", f"172.30.10.1 50000 {session} 22")
    return network.evaluate(MGMT, "ifupdown", 90)


INTERFACES = {"/etc/network/interfaces": "auto lo\niface lo inet loopback\n\nauto eth0\n"
                                         "iface eth0 inet static\n    address 172.30.10.11/24\n"}


def test_takeover_is_disruptive_and_says_what_moves(monkeypatch):
    ev = evaluate(monkeypatch, BEFORE, INTERFACES)
    assert ev["risk"] == "disruptive"
    assert ev["effect"]["addresses"] == [{"address": "172.30.10.11/24", "from": "eth0",
                                          "to": "br0"}]
    assert ev["effect"]["default_route"] == {"old": ["via 172.30.10.1 dev eth0"],
                                             "new": ["via 172.30.10.1 dev br0"]}
    assert ev["effect"]["bridge_mac"] == {"old": None, "new": "52:54:00:00:00:11"}
    assert ev["effect"]["management_session"] == {
        "address": "172.30.10.11", "interface": "eth0", "touched": True, "kept": True}
    assert ev["spec"]["created"] == ["br0"]
    assert ev["spec"]["before"]["addrs"]["eth0"] == ["172.30.10.11/24"]
    assert ev["spec"]["before"]["ifupdown_up"] == ["eth0"]
    assert set(ev["files"]) == {"/etc/network/interfaces", "/etc/network/interfaces.d/kvmcluster"}


def test_converged_node_is_a_no_op(monkeypatch):
    ev = evaluate(monkeypatch, BEFORE, INTERFACES)
    written = dict(INTERFACES)
    written.update({p: f["new"] for p, f in ev["spec"]["files"].items()})
    again = evaluate(monkeypatch, AFTER, written)
    assert again["risk"] == "no-op" and again["files"] == {} and again["runtime_missing"] == []


def test_dns_only_change_is_non_disruptive(monkeypatch):
    ev = evaluate(monkeypatch, BEFORE, INTERFACES)
    written = dict(INTERFACES)
    written.update({p: f["new"] for p, f in ev["spec"]["files"].items()})
    written["/etc/network/interfaces.d/kvmcluster"] = written[
        "/etc/network/interfaces.d/kvmcluster"].replace("dns-nameservers", "dns-nameservers 9.9.9.9")
    again = evaluate(monkeypatch, AFTER, written)
    assert again["risk"] == "non-disruptive"
    assert list(again["files"]) == ["/etc/network/interfaces.d/kvmcluster"]


def test_missing_nic_names_the_pillar_key_and_node(monkeypatch):
    rt = copy.deepcopy(BEFORE)
    with pytest.raises(network.CommandExecutionError) as err:
        network.plan(KVM02, rt)
    assert str(err.value).startswith("[kvm02] kvmcluster:nodes:kvm02:bond:slaves: eno1, eno2 "
                                     "do not exist on this node (NICs here: eth0)")


def test_guest_taps_on_the_bridge_are_seen(monkeypatch):
    rt = copy.deepcopy(AFTER)
    rt["links"]["vnet0"] = link("fe:54:00:00:00:99", kind="tun", master="br0")
    assert network.guests_on("br0", rt, own={"eth0"}) == ["vnet0"]
    assert network.guests_on("br0", AFTER, own={"eth0"}) == []
    ev = evaluate(monkeypatch, rt, INTERFACES)  # the files would change: br0 is touched
    assert ev["guests"] == ["vnet0"]


def test_who_confirms(monkeypatch):
    # The session arrived at the address that stays: the node proves the path itself.
    ev = evaluate(monkeypatch, BEFORE, INTERFACES)
    assert ev["effect"]["confirmation"]["by"] == "node"
    assert ev["spec"]["confirm"] == "auto"
    assert ev["spec"]["peer"] == {"address": "172.30.10.1", "port": 22}
    # Re-addressing: the session's address goes away; the management node must confirm.
    ev = evaluate(monkeypatch, BEFORE, INTERFACES, session="172.30.10.99")
    assert ev["effect"]["confirmation"]["by"] == "node"  # .99 is not on an owned device
    moved = copy.deepcopy(BEFORE)
    moved["addrs"]["eth0"] = ["172.30.10.99/24"]
    ev = evaluate(monkeypatch, moved, INTERFACES, session="172.30.10.99")
    assert ev["effect"]["management_session"]["kept"] is False
    assert ev["effect"]["confirmation"] == {
        "by": "management", "why": "the management address 172.30.10.99 moves"}
    assert ev["spec"]["confirm"] == "manual"
    assert {"address": "172.30.10.99/24", "from": "eth0", "to": None} in \
        ev["effect"]["addresses"]
    # manual always waits for the management node.
    monkeypatch.setenv("SSH_CONNECTION", "172.30.10.1 50000 172.30.10.11 22")
    ev = network.evaluate(MGMT, "ifupdown", 90, {"confirm": "manual"})
    assert ev["effect"]["confirmation"]["why"] == "network:confirm is manual"


def test_a_rollback_timeout_shorter_than_the_apply_is_refused(monkeypatch):
    evaluate(monkeypatch, BEFORE, INTERFACES)  # the same monkeypatched node
    with pytest.raises(network.CommandExecutionError, match=r"\[mgmt01\] kvmcluster:network:"
                       r"rollback_timeout: 10s is shorter than this ifupdown change can take"):
        network.evaluate(MGMT, "ifupdown", 10)


def test_ifcfg_on_el9_is_refused_with_what_to_use(monkeypatch):
    monkeypatch.setattr(network, "__grains__", {"os_family": "RedHat", "os": "Rocky",
                                                "osmajorrelease": 9}, raising=False)
    me = dict(MGMT, backend="ifcfg")
    with pytest.raises(network.CommandExecutionError) as err:
        network.check_backend(me, "ifcfg")
    assert str(err.value).startswith("[mgmt01] kvmcluster:nodes:mgmt01:backend: ifcfg needs "
                                     "the network-scripts package")
    assert "use networkmanager (keyfiles" in str(err.value)
    monkeypatch.setattr(network, "_active", lambda unit: False)
    monkeypatch.setattr(network.glob, "glob", lambda p: [])
    assert network.detect_backend() == "networkmanager"
    monkeypatch.setattr(network, "__grains__", {"os_family": "RedHat", "osmajorrelease": 8})
    monkeypatch.setattr(network, "_has_network_scripts", lambda: True)
    assert network.detect_backend() == "ifcfg"
    assert network.check_backend(me, "ifcfg") is True
