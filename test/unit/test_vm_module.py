"""kvmcluster_vm against libvirt's own test driver (test:///default): the real binding and
real libvirt semantics for domains, metadata and volumes, without a hypervisor."""
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmtestlib import NoClose, utils_dunder

libvirt = pytest.importorskip("libvirt")
ROOT = Path(__file__).resolve().parents[2]


def _load(rel, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


virt = _load("_utils/kvmcluster_virt.py", "kvmcluster_virt_t")
URI = "test:///default"
GIB = 1 << 30


NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
    <active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>4194304</memory>
  <pool type='dir'><name>default-pool</name><target><path>/default-pool</path></target></pool>
</node>
"""


class _Shared:
    """A test-driver node of its own (from a file: fresh for each test), one connection that
    every call of the module shares, as one libvirtd would."""

    def __init__(self, path):
        path.write_text(NODE_XML)
        self.conn = libvirt.open(f"test://{path}")

    def open(self, uri):  # noqa: ARG002
        return NoClose(self.conn)


@pytest.fixture
def vmmod(tmp_path):
    shared = _Shared(tmp_path / "node.xml")
    mod = _load("_modules/kvmcluster_vm.py", "kvmcluster_vm_t")
    mod.__utils__ = {**utils_dunder(), "kvmcluster_virt.binding": lambda: libvirt,
                     "kvmcluster_virt.connect": shared.open}
    mod.__salt__ = {}
    mod.conn = shared.conn
    pool = shared.conn.storagePoolLookupByName("default-pool")
    pool.createXML(f"<volume><name>gold.raw</name><capacity>{GIB}</capacity>"
                   "<target><format type='raw'/></target></volume>", 0)
    return mod


def _vm(name="web1", **kw):
    return {"name": name, "domain_type": "qemu", "vcpus": 1, "memory_mb": 128, "disk_gb": 1,
            "disks": [], "clone": "full", "mac": "52:54:00:00:00:01", **kw}


IMAGE = {"name": "gold", "volume": "gold.raw", "path": None, "format": "raw",
         "kernel": "/srv/vmlinuz", "initrd": "/srv/initrd", "cmdline": "console=ttyS0 a=<b>"}


def _make(vmmod, name="web1"):
    gold = vmmod.golden(IMAGE, "default-pool", uri=URI)
    vol = vmmod.create_volume("default-pool", f"{name}.qcow2", 1, source=gold, uri=URI)
    xml = vmmod.domain_xml(_vm(name), IMAGE, [vol], network="host-bridge")
    vmmod.define(xml, uri=URI)
    return vol


def test_domain_xml_carries_the_metadata_and_escapes_the_cmdline(vmmod):
    vol = {"pool": "default-pool", "name": "web1.qcow2", "path": "/p/web1.qcow2",
           "format": "qcow2"}
    xml = vmmod.domain_xml(_vm(), IMAGE, [vol], bridge="br0")
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("os/cmdline") == "console=ttyS0 a=<b>"
    own = root.find(f"metadata/{{{vmmod.NS}}}vm")
    assert [v.attrib for v in own.findall(f"{{{vmmod.NS}}}volume")] == [
        {"pool": "default-pool", "name": "web1.qcow2", "path": "/p/web1.qcow2"}]
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == "br0"
    assert nic.find("mac").get("address") == "52:54:00:00:00:01"


def test_define_describe_and_resources(vmmod):
    _make(vmmod)
    d = vmmod.describe("web1", uri=URI)
    assert d["exists"] and d["owned"] and d["vcpus"] == 1 and d["memory_mb"] == 128
    assert d["network"] == "host-bridge" and d["mac"] == "52:54:00:00:00:01"
    assert d["volumes"] == [{"pool": "default-pool", "name": "web1.qcow2",
                             "path": "/default-pool/web1.qcow2"}]
    assert d["disks"][0]["capacity"] == GIB
    vmmod.start("web1", uri=URI)
    done = vmmod.set_resources("web1", vcpus=2, memory_mb=96, uri=URI)
    assert done == {"live": ["memory"], "next boot": ["vcpus"]}
    d = vmmod.describe("web1", uri=URI)
    assert (d["vcpus"], d["memory_mb"], d["active"]) == (2, 96, True)


def test_remove_deletes_only_the_formulas_own_volumes(vmmod):
    _make(vmmod)
    pool = vmmod.conn.storagePoolLookupByName("default-pool")
    # A hand-made domain using the golden image and a volume of its own.
    pool.createXML(f"<volume><name>hand.qcow2</name><capacity>{GIB}</capacity>"
                   "<target><format type='qcow2'/></target></volume>", 0)
    vmmod.conn.defineXML("<domain type='test'><name>hand</name><memory>131072</memory>"
                         "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                         "<source file='/default-pool/hand.qcow2'/><target dev='vda'/></disk>"
                         "</devices></domain>")
    with pytest.raises(vmmod.CommandExecutionError, match="not made by kvmcluster"):
        vmmod.remove("hand", "default-pool", uri=URI)
    gone = vmmod.remove("web1", "default-pool", protected=["/default-pool/gold.raw"], uri=URI)
    assert gone == {"deleted": ["/default-pool/web1.qcow2"], "kept": {}}
    left = sorted(v.name() for v in pool.listAllVolumes())
    assert left == ["gold.raw", "hand.qcow2"]
    assert vmmod.describe("hand", uri=URI)["exists"]


def test_remove_keeps_a_volume_another_domain_uses_or_a_golden_one(vmmod):
    vol = _make(vmmod)
    vmmod.conn.defineXML("<domain type='test'><name>other</name><memory>131072</memory>"
                         "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                         f"<source file='{vol['path']}'/><target dev='vda'/></disk>"
                         "</devices></domain>")
    gone = vmmod.remove("web1", "default-pool", uri=URI)
    assert gone == {"deleted": [], "kept": {vol["path"]: "used by another domain"}}
    _make(vmmod, "web2")
    gone = vmmod.remove("web2", "default-pool", protected=["/default-pool/web2.qcow2"], uri=URI)
    assert gone["kept"] == {"/default-pool/web2.qcow2": "a golden image"}
    _make(vmmod, "web3")
    gone = vmmod.remove("web3", "other-pool", uri=URI)
    assert gone["kept"] == {"/default-pool/web3.qcow2": "in pool default-pool, not other-pool"}


def test_capacity_counts_running_domains(vmmod):
    _make(vmmod)
    vmmod.start("web1", uri=URI)
    cap = vmmod.capacity(uri=URI)
    assert cap["committed"]["web1"] == {"memory_mb": 128, "vcpus": 1}
    assert cap["memory_mb"] > 0 and cap["cpus"] > 0


# ---- stop: ACPI first, a hard power-off only after the timeout ---------------------------

def test_stop_asks_acpi_first_and_reports_how(vmmod):
    _make(vmmod)
    vmmod.start("web1", uri=URI)
    # The test driver's guests honour the ACPI request at once.
    assert vmmod.stop("web1", timeout=5, uri=URI)["how"] == "acpi"
    assert not vmmod.conn.lookupByName("web1").isActive()
    assert vmmod.stop("web1", timeout=5, uri=URI) == {"how": "already", "seconds": 0}


class _Stubborn:
    """A running guest that ignores the ACPI power button (the calls are recorded)."""

    def __init__(self, dom):
        self._d, self.calls = dom, []

    def shutdown(self):
        self.calls.append("shutdown")

    def destroy(self):
        self.calls.append("destroy")
        return self._d.destroy()

    def __getattr__(self, k):
        return getattr(self._d, k)


def test_a_guest_that_ignores_acpi_is_powered_off_only_after_the_timeout(vmmod,
                                                                           monkeypatch):
    _make(vmmod)
    vmmod.start("web1", uri=URI)
    stubborn = _Stubborn(vmmod.conn.lookupByName("web1"))
    monkeypatch.setattr(vmmod, "_domain", lambda conn, name: stubborn)
    out = vmmod.stop("web1", timeout=1, uri=URI)
    assert out["how"] == "destroyed" and out["seconds"] >= 1, out
    assert stubborn.calls == ["shutdown", "destroy"]
    assert not vmmod.conn.lookupByName("web1").isActive()


# ---- answers: an echo reply, or a live neighbour entry with the VM's MAC ------------------

@pytest.mark.parametrize("ping_rc, neigh, mac, want", [
    (0, [], None, "echo reply"),
    (1, [{"lladdr": "52:54:00:00:00:01", "state": ["REACHABLE"]}], "52:54:00:00:00:01",
     "neighbour 52:54:00:00:00:01"),
    # Another MAC at that address is not the VM answering.
    (1, [{"lladdr": "52:54:00:99:99:99", "state": ["REACHABLE"]}], "52:54:00:00:00:01", ""),
    # A stale or failed entry is no answer.
    (1, [{"lladdr": "52:54:00:00:00:01", "state": ["STALE"]}], "52:54:00:00:00:01", ""),
    (1, [{"state": ["FAILED"]}], None, ""),
])
def test_answers_is_an_echo_or_a_live_neighbour_with_the_vms_mac(vmmod, monkeypatch, ping_rc,
                                                                 neigh, mac, want):
    import json
    import subprocess

    seen = []

    def run(argv, **kw):
        seen.append(argv[0])
        out = json.dumps(neigh) if argv[0] == "ip" else ""
        return subprocess.CompletedProcess(argv, ping_rc if argv[0] == "ping" else 0, out, "")

    monkeypatch.setattr(subprocess, "run", run)
    assert vmmod.answers("192.0.2.10", mac) == want
    assert seen == (["ping"] if ping_rc == 0 else ["ping", "ip"])


@pytest.mark.parametrize("kind", ["empty", "full", "linked"])
def test_every_volume_made_names_the_qemu_account_as_owner(vmmod, kind):
    """On a root-squashed share libvirt makes a volume as the QEMU account only when the
    definition names it (it fails to give the squashed root's file to root otherwise)."""
    vmmod.__utils__["kvmcluster_volume.owner"] = lambda: (64055, 64056)
    gold = vmmod.golden(IMAGE, "default-pool", uri=URI)
    source = None if kind == "empty" else gold
    vol = vmmod.create_volume("default-pool", f"{kind}.qcow2", 1, source=source,
                              linked=kind == "linked", uri=URI)
    got = ET.fromstring(vmmod.conn.storageVolLookupByPath(vol["path"]).XMLDesc(0))
    perms = got.find("target/permissions")
    assert perms is not None, ET.tostring(got, encoding="unicode")
    assert (perms.findtext("owner"), perms.findtext("group"), perms.findtext("mode")) == (
        "64055", "64056", "0600")
