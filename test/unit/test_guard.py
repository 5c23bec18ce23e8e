"""The guests' traffic filter: the filter the formula defines, the <filterref> every guest
NIC carries (bound to the VM's ip, or learned from the management nodes' DHCP only), read
back, changed live on a running VM, and the VM state's changes (test=True equal)."""
import copy
import xml.etree.ElementTree as ET

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module

libvirt = pytest.importorskip("libvirt")

from test_vm_module import IMAGE, URI, _make, vmmod  # noqa: E402,F401  (the fixture)
from test_vm_state import _apply, state  # noqa: E402,F401  (the fixture)

guard = load_module("_utils", "kvmcluster_guard")
model = load_module("_modules", "kvmcluster_model")
BUILT, _ = model.build(SEED_PILLAR["kvmcluster"], formula_values()["cluster"])
VIEW = model.node_view(BUILT, "kvm01")


def test_a_vm_with_an_ip_is_bound_to_it():
    g = guard.wanted(VIEW, VIEW["vms"]["web1"])
    assert g == {"filter": "kvmcluster-guest", "params": [("IP", "172.30.10.111")]}
    ref = guard.filterref(g)
    assert ET.tostring(ref, encoding="unicode") == (
        '<filterref filter="kvmcluster-guest"><parameter name="IP" value="172.30.10.111" />'
        "</filterref>")
    iface = ET.fromstring("<interface type='bridge'/>")
    iface.append(ref)
    assert guard.read(iface) == g
    assert guard.label(g) == "kvmcluster-guest IP=172.30.10.111"


def test_a_vm_without_an_ip_learns_it_from_the_management_nodes_dhcp_only():
    g = guard.wanted(VIEW, VIEW["vms"]["scratch1"])
    assert g["params"] == [("CTRL_IP_LEARNING", "dhcp"), ("DHCPSERVER", "172.30.10.11"),
                           ("DHCPSERVER", "172.30.10.12")]


def test_antispoof_off_means_no_filter():
    assert guard.wanted(VIEW, dict(VIEW["vms"]["web1"], antispoof=False)) is None
    assert guard.filterref(None) is None and guard.label(None) == "none"
    assert guard.read(ET.fromstring("<interface type='bridge'/>")) is None


def test_the_filter_is_clean_traffic_and_no_dhcp_server():
    root = ET.fromstring(guard.filter_xml())
    assert (root.get("name"), root.get("chain")) == ("kvmcluster-guest", "root")
    assert [r.get("filter") for r in root.findall("filterref")] == ["clean-traffic"]
    (rule,) = root.findall("rule")
    assert (rule.get("action"), rule.get("direction")) == ("drop", "out")
    assert rule.find("udp").attrib == {"srcportstart": "67", "srcportend": "67"}


def test_the_model_refuses_an_antispoof_that_is_no_switch():
    bad = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    bad["vms"]["web1"]["antispoof"] = "no"
    _, errors = model.build(bad, formula_values()["cluster"])
    assert "[cluster] kvmcluster:vms:web1:antispoof: must be true or false, got 'no'" in \
        [str(e) for e in errors]


def test_the_domain_carries_the_filter_and_reads_it_back(vmmod):  # noqa: F811
    g = guard.wanted(VIEW, VIEW["vms"]["web1"])
    gold = vmmod.golden(IMAGE, "default-pool", uri=URI)
    vol = vmmod.create_volume("default-pool", "web1.qcow2", 1, source=gold, uri=URI)
    vm = {"name": "web1", "domain_type": "qemu", "vcpus": 1, "memory_mb": 128, "disk_gb": 1,
          "disks": [], "clone": "full", "mac": "52:54:00:00:00:01"}
    vmmod.define(vmmod.domain_xml(vm, IMAGE, [vol], bridge="br0", guard=g), uri=URI)
    assert vmmod.describe("web1", uri=URI)["guard"] == g
    # A hostile parameter never reaches libvirt's XML.
    with pytest.raises(Exception, match="control character|refus"):
        vmmod.interface_xml("52:54:00:00:00:02", bridge="br0",
                            guard={"filter": "kvmcluster-guest", "params": [("IP", "1\n2")]})


class _Recorder:
    """A running test-driver domain that records live device updates and shows them in its
    live XML, as libvirt would (the test driver has no device updates)."""

    def __init__(self, dom, apply=True):
        self._d, self.updates, self.apply = dom, [], apply

    def updateDeviceFlags(self, xml, flags):
        self.updates.append((xml, flags))
        return 0

    def XMLDesc(self, flags=0):  # noqa: N802
        xml = self._d.XMLDesc(flags)
        if flags or not self.updates or not self.apply:
            return xml
        root = ET.fromstring(xml)
        devices = root.find("devices")
        old = devices.find("interface")
        devices.insert(list(devices).index(old), ET.fromstring(self.updates[-1][0]))
        devices.remove(old)
        return ET.tostring(root, encoding="unicode")

    def __getattr__(self, k):
        return getattr(self._d, k)


def test_a_running_vm_gets_its_filter_live(vmmod, monkeypatch):  # noqa: F811
    _make(vmmod, "web1")  # on network host-bridge, no filter
    dom = vmmod.conn.lookupByName("web1")
    dom.create()
    rec = _Recorder(dom)
    monkeypatch.setattr(vmmod, "_domain", lambda conn, name: rec)
    g = guard.wanted(VIEW, VIEW["vms"]["web1"])
    mac = vmmod.describe("web1", uri=URI)["mac"]
    assert vmmod.set_interface("web1", mac, network="host-bridge", guard=g, uri=URI) == "live"
    (xml, flags), = rec.updates
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    assert guard.read(ET.fromstring(xml)) == g and f"address=\"{mac}\"" in xml
    persistent = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert guard.read(persistent.find("devices/interface")) == g
    # A new MAC is not changed under a running guest: at its next boot.
    rec.updates.clear()
    assert vmmod.set_interface("web1", "52:54:00:00:00:09", network="host-bridge", guard=g,
                               uri=URI) == "next boot"
    assert rec.updates == []
    # libvirt keeping the old filter is an error, never a silent success.
    monkeypatch.setattr(vmmod, "_domain", lambda conn, name: _Recorder(dom, apply=False))
    with pytest.raises(vmmod.CommandExecutionError, match="kept the old traffic filter"):
        vmmod.set_interface("web1", mac, network="host-bridge", guard=g, uri=URI)


class _FilterConn:
    """A libvirt connection with an nwfilter store (the test driver has none)."""

    def __init__(self):
        self.defined = {}

    def nwfilterLookupByName(self, name):
        if name not in self.defined:
            raise libvirt.libvirtError("no filter")
        xml = self.defined[name]

        class F:
            def XMLDesc(self, flags):  # noqa: ARG002,N802
                return xml
        return F()

    def nwfilterDefineXML(self, xml):
        root = ET.fromstring(xml)
        if root.find("uuid") is None:
            ET.SubElement(root, "uuid").text = "9b4e0b8c-0000-4000-8000-000000000001"
        self.defined[root.get("name")] = ET.tostring(root, encoding="unicode")

    def close(self):
        pass


def test_the_filter_is_defined_once_and_redefined_when_changed(vmmod):  # noqa: F811
    conn = _FilterConn()
    vmmod.__utils__ = dict(vmmod.__utils__, **{"kvmcluster_virt.connect": lambda uri: conn})
    predicted = vmmod.ensure_filter(test=True, uri=URI)
    assert conn.defined == {} and predicted["old"] is None
    assert vmmod.ensure_filter(uri=URI) == predicted == {"old": None,
                                                         "new": vmmod.wanted_filter()}
    assert vmmod.ensure_filter(uri=URI) == {}
    # Changed by hand: put back, keeping libvirt's uuid.
    conn.defined["kvmcluster-guest"] = conn.defined["kvmcluster-guest"].replace(
        'srcportstart="67"', 'srcportstart="68"')
    changed = vmmod.ensure_filter(uri=URI)
    assert changed["new"] == vmmod.wanted_filter() and changed["old"] != changed["new"]
    assert "9b4e0b8c" in conn.defined["kvmcluster-guest"]
    assert vmmod.ensure_filter(uri=URI) == {}


def test_the_state_turns_the_filter_on_live_and_test_mode_said_so(state, monkeypatch):  # noqa: F811
    mod = state["mod"]
    recorders = {}
    real = mod._domain

    def recorded(conn, name):
        dom = real(conn, name)
        return recorders.setdefault(name, _Recorder(dom)) if dom is not None else None
    monkeypatch.setattr(mod, "_domain", recorded)
    state["view"]["vms"]["small"]["antispoof"] = False
    made = _apply()
    assert made["result"] is True, made["comment"]
    assert state["mod"].describe("small", uri=URI)["guard"] is None
    state["view"]["vms"]["small"]["antispoof"] = True
    predicted = _apply(test=True)
    applied = _apply()
    assert applied["result"] is True, applied["comment"]
    assert predicted["result"] is None and predicted["changes"] == applied["changes"]
    assert applied["changes"] == {"small": {"old": {"filter": "none"}, "new": {
        "filter": "kvmcluster-guest CTRL_IP_LEARNING=dhcp DHCPSERVER=172.30.10.11 "
                  "DHCPSERVER=172.30.10.12"}}}
    assert "traffic filter changed" in applied["comment"]
    # The running VM got it live, not only at its next boot.
    (xml, flags), = recorders["small"].updates
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE and "kvmcluster-guest" in xml
    assert _apply()["changes"] == {}


def test_the_filter_state_test_mode_equals_the_real_run_then_nothing(vmmod):  # noqa: F811
    from kvmtestlib import utils_dunder

    vm_state = load_module("_states", "kvmcluster_vm")
    conn = _FilterConn()
    vmmod.__utils__ = dict(vmmod.__utils__, **{"kvmcluster_virt.connect": lambda uri: conn})
    vm_state.__salt__ = {"kvmcluster_vm.ensure_filter": vmmod.ensure_filter,
                         "kvmcluster_vm.wanted_filter": vmmod.wanted_filter,
                         "kvmcluster_model.current": lambda: copy.deepcopy(VIEW)}
    vm_state.__utils__ = utils_dunder()
    vm_state.__opts__ = {"test": True}
    predicted = vm_state.filter_defined("f", uri=URI)
    vm_state.__opts__ = {"test": False}
    real = vm_state.filter_defined("f", uri=URI)
    assert predicted["result"] is None and real["result"] is True, real["comment"]
    assert predicted["changes"] == real["changes"] == {
        "kvmcluster-guest": {"old": None, "new": vmmod.wanted_filter()}}
    assert vm_state.filter_defined("f", uri=URI)["changes"] == {}
    # Under test on a fresh node (no libvirt yet) the same change is predicted.
    vm_state.__salt__["kvmcluster_vm.ensure_filter"] = lambda **k: (_ for _ in ()).throw(
        RuntimeError("libvirt is not installed"))
    vm_state.__opts__ = {"test": True}
    assert vm_state.filter_defined("f", uri=URI)["changes"] == real["changes"]
