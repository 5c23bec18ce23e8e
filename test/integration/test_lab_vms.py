"""VMs from pillar on the lab: two container nodes and the management node, the golden image
on a shared directory every node mounts (storage type external), tiny emulated guests that
lease their address and name by DHCP from the management node and print them on their
serial console (a file on their node)."""
import hashlib
import json
import time

import pytest

from lab import control, guest, paths, saltcfg
from lab.report import summarize
from labtest import Lab, record_timing, show

DOMAIN = "lab.kvmcluster.test"
NODES = ["mgmt01", "kvm01", "kvm02"]
HOME_OF = {name: vm["node"] for name, vm in saltcfg.LAB_VMS.items()}
STATE_ID = "kvmcluster_vm_|-kvmcluster-vms-managed_|-kvmcluster-vms-managed_|-managed"


@pytest.fixture(scope="module")
def vms_lab():
    control.down()
    state = control.up(containers=2, management=1)
    lab = Lab(state)
    guest.install_golden(paths.SHARED)
    lab.pillar = saltcfg.with_vms(lab.pillar)  # what reset_pillar() goes back to
    lab.reset_pillar()
    yield lab
    control.down()


@pytest.fixture(scope="module")
def converged(vms_lab):
    predicted, _ = vms_lab.apply("kvmcluster", "test=True")
    t0 = time.monotonic()
    first, proc = vms_lab.apply()
    took = time.monotonic() - t0
    record_timing("salt-ssh state.apply with 3 VMs, first run (mgmt01 + 2 container nodes)", took)
    t0 = time.monotonic()
    second, _ = vms_lab.apply()
    record_timing("salt-ssh state.apply with 3 VMs, second run", time.monotonic() - t0)
    return predicted, first, second, proc


@pytest.fixture
def at_base(vms_lab, converged):  # noqa: ARG001
    """Each test starts from the lab's VM pillar, applied: what an earlier test changed is
    put back (a VM another test removed or stopped is made again or started)."""
    vms_lab.reset_pillar()
    results, proc = vms_lab.apply()
    for n in NODES:
        assert summarize(results[n])["failed"] == 0, (n, summarize(results[n])["failures"],
                                                      proc.stdout[-1500:])
    for vm in saltcfg.LAB_VMS:
        console_line(vms_lab, vm, guest.READY_MARKER, 150)
    return vms_lab


def console(lab, vm):
    return lab.ssh(HOME_OF[vm], f"cat /var/log/libvirt/qemu/{vm}-console.log 2>/dev/null || true")


def console_line(lab, vm, marker, timeout, after=0):
    """The first console line of ``vm`` with ``marker`` past byte ``after`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = console(lab, vm)[after:]
        line = next((ln for ln in text.splitlines() if ln.startswith(marker)), None)
        if line:
            return line
        time.sleep(1)
    raise AssertionError(f"{vm}: no {marker} on its console within {timeout}s: {text[-800:]}")


def vm_result(results, node):
    return results[node][STATE_ID]


def describe(lab, vm, node=None):  # noqa: ARG001
    node = node or HOME_OF[vm]
    proc = saltcfg.salt_ssh(node, "kvmcluster_vm.describe", vm, "--out=json", "--static",
                            timeout=300)
    return json.loads(proc.stdout)[node]


def with_edit(lab, **vms):
    """The lab's VM pillar with some VMs' keys changed (None removes a VM)."""
    edited = json.loads(json.dumps(saltcfg.LAB_VMS))
    for name, keys in vms.items():
        edited[name] = {**edited.get(name, {}), **keys}
    return saltcfg.with_vms(saltcfg.lab_pillar(lab.nodes), edited)


def test_one_apply_runs_the_vms_with_their_leases_and_names(vms_lab, converged):
    predicted, first, second, proc = converged
    assert set(first) == set(NODES), proc.stdout[-2000:]
    for n in NODES:
        assert summarize(first[n])["failed"] == 0, (n, summarize(first[n])["failures"])
        for key, real in first[n].items():
            assert predicted[n][key]["result"] in (None, True), (n, key)
            assert predicted[n][key]["changes"] == real["changes"], (n, key)
        assert summarize(second[n])["changed"] == 0, (n, summarize(second[n])["changed_ids"])
    assert set(vm_result(first, "kvm01")["changes"]) == {"vm1"}
    assert set(vm_result(first, "kvm02")["changes"]) == {"vm2", "vm3"}
    assert vm_result(first, "kvm02")["changes"]["vm2"]["new"]["clone"] == "linked"
    for vm, ip in saltcfg.VM_IPS.items():
        lease = console_line(vms_lab, vm, guest.LEASE_MARKER, 150)
        fields = dict(f.split("=", 1) for f in lease.split()[1:] if "=" in f)
        assert fields["ip"] == ip and fields["name"] == vm, lease
        assert fields["domain"] == DOMAIN and fields["serverid"] == "172.30.10.12", lease
        disk = console_line(vms_lab, vm, guest.DISK_MARKER, 30)
        assert disk.endswith(guest.GOLDEN_HEADER), disk  # its clone of the golden image
        show(f"{vm} console on {HOME_OF[vm]}", f"{disk}\n{lease}")
    got = vms_lab.ssh("kvm02", f"getent hosts vm1.{DOMAIN}").split()
    assert got[:2] == [saltcfg.VM_IPS["vm1"], f"vm1.{DOMAIN}"], got
    assert " 0% packet loss" in vms_lab.ssh("kvm01", f"ping -c 1 -W 5 vm3.{DOMAIN}")
    # The external share: each node left its marker on the one filesystem.
    assert sorted(p.name for p in (paths.SHARED / ".kvmcluster/nodes").iterdir()) == [
        "kvm01", "kvm02"]


def test_memory_and_vcpus_are_changed_live_or_for_the_next_boot(at_base):
    lab = at_base
    lab.set_pillar(with_edit(lab, vm1={"memory_mb": 128, "vcpus": 2}))
    try:
        results, _ = lab.apply_on("kvm01")
        res = vm_result(results, "kvm01")
        assert res["result"] is True, res["comment"]
        assert res["changes"] == {"vm1": {"old": {"vcpus": 1, "memory_mb": 160},
                                          "new": {"vcpus": 2, "memory_mb": 128}}}
        assert "memory live" in res["comment"] and "vcpus at the next boot" in res["comment"]
        show("vm1: memory and vcpus changed in pillar", res["comment"])
        d = describe(lab, "vm1")
        assert (d["vcpus"], d["memory_mb"], d["active"]) == (2, 128, True)
        assert d["live"]["vcpus"] == 1 and d["live"]["memory_mb"] == 128
        again, _ = lab.apply_on("kvm01")
        assert summarize(again["kvm01"])["changed"] == 0
    finally:
        lab.reset_pillar()


def test_stopped_by_acpi_and_powered_off_after_the_timeout(at_base):
    lab = at_base
    size = {vm: len(console(lab, vm)) for vm in ("vm1", "vm3")}
    lab.set_pillar(with_edit(lab, vm1={"state": "stopped"}, vm3={"state": "stopped"}))
    try:
        results, _ = lab.apply()
    finally:
        lab.reset_pillar()
    one, two = vm_result(results, "kvm01"), vm_result(results, "kvm02")
    assert one["changes"] == {"vm1": {"old": {"state": "running"}, "new": {"state": "stopped"}}}
    assert two["changes"] == {"vm3": {"old": {"state": "running"}, "new": {"state": "stopped"}}}
    assert "vm1: shut down by ACPI in" in one["comment"], one["comment"]
    assert "vm3: did not stop within 15 s of an ACPI shutdown: powered off" in two["comment"], \
        two["comment"]
    show("state: stopped", f"{one['comment']}\n{two['comment']}")
    assert console_line(lab, "vm1", "KVMCLUSTER-POWER-BUTTON", 5, after=size["vm1"])
    assert "KVMCLUSTER-POWER-BUTTON" not in console(lab, "vm3")[size["vm3"]:]
    assert not describe(lab, "vm1")["active"] and not describe(lab, "vm3")["active"]


HAND_PY = r"""
import json, sys, libvirt
c = libvirt.open("qemu:///system")
pool = c.storagePoolLookupByName("default")
vol = pool.createXML("<volume><name>hand.qcow2</name><capacity unit='MiB'>64</capacity>"
                     "<target><format type='qcow2'/></target></volume>", 0)
c.defineXML("<domain type='qemu'><name>hand</name><memory unit='MiB'>64</memory>"
            "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
            "<driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda'/>"
            "</disk></devices></domain>" % vol.path())
print(vol.path())
"""
HAND_GONE_PY = r"""
import libvirt
c = libvirt.open("qemu:///system")
for d in c.listAllDomains(0):
    if d.name() == "hand":
        d.undefine()
pool = c.storagePoolLookupByName("default")
pool.refresh(0)
if "hand.qcow2" in pool.listVolumes():
    pool.storageVolLookupByName("hand.qcow2").delete(0)
"""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_absent_removes_the_vm_and_its_own_volume_only(at_base):
    lab = at_base
    golden = sha256(paths.SHARED / "tiny.raw")
    hand = lab.ssh("kvm02", "python3 -", input=HAND_PY).strip()
    lab.set_pillar(with_edit(lab, vm2={"state": "absent"}))
    try:
        results, _ = lab.apply_on("kvm02")
        res = vm_result(results, "kvm02")
        assert res["changes"] == {"vm2": {"old": {"state": "running", "volumes": [
            "/data01/primary/vm2.qcow2"]}, "new": None}}, res
        assert "vm2: removed with 1 volume(s)" in res["comment"], res["comment"]
        show("state: absent", res["comment"])
        assert not describe(lab, "vm2")["exists"]
        files = lab.ssh("kvm02", "ls /data01/primary").split()
        assert "vm2.qcow2" not in files and "vm3.qcow2" in files and "hand.qcow2" in files
        assert describe(lab, "hand", "kvm02")["exists"] and hand == "/data01/primary/hand.qcow2"
        assert sha256(paths.SHARED / "tiny.raw") == golden
        again, _ = lab.apply_on("kvm02")
        assert summarize(again["kvm02"])["changed"] == 0
    finally:
        lab.ssh("kvm02", "python3 -", input=HAND_GONE_PY)
        lab.reset_pillar()


def test_a_vm_that_would_overcommit_the_node_is_refused_before_any_change(at_base):
    lab = at_base
    lab.set_pillar(with_edit(lab, big1={"node": "kvm01", "image": "tiny",
                                        "memory_mb": 1 << 20}))
    try:
        results, _ = lab.apply_on("kvm01")
    finally:
        lab.reset_pillar()
    res = vm_result(results, "kvm01")
    assert res["result"] is False and res["changes"] == {}, res
    assert "kvm01 cannot take VM big1 (kvmcluster:vms): memory:" in res["comment"], res["comment"]
    assert "nothing was changed" in res["comment"]
    show("overcommit refused", res["comment"])
    assert not describe(lab, "big1", "kvm01")["exists"]
    assert "big1.qcow2" not in lab.ssh("kvm01", "ls /data01/primary").split()


def test_snapshot_create_list_delete_on_a_running_vm(at_base):
    lab = at_base

    def call(*args):
        proc = saltcfg.salt_ssh("kvm01", *args, "--out=json", "--static", timeout=600)
        out = json.loads(proc.stdout)["kvm01"]
        assert not (isinstance(out, dict) and out.get("retcode")), out
        return out

    made = call("kvmcluster_vm.snapshot", "vm1", "s1")
    assert made["disks"] == ["/data01/primary/vm1.s1.qcow2"], made
    listed = call("kvmcluster_vm.snapshots", "vm1")
    assert list(listed) == ["s1"] and listed["s1"]["disks"] == ["/data01/primary/vm1.s1.qcow2"]
    t0 = time.monotonic()
    gone = call("kvmcluster_vm.snapshot_delete", "vm1", "s1")
    record_timing("snapshot delete (block commit) of running vm1", time.monotonic() - t0)
    assert gone["merged"] == ["/data01/primary/vm1.s1.qcow2"]
    assert gone["disks"] == ["/data01/primary/vm1.qcow2"], gone
    assert call("kvmcluster_vm.snapshots", "vm1") == {}
    d = describe(lab, "vm1")
    assert d["active"] and d["snapshots"] == [] and d["disks"][0]["path"].endswith("vm1.qcow2")
    assert "vm1.s1.qcow2" not in lab.ssh("kvm01", "ls /data01/primary").split()
    show("snapshot s1 of running vm1", json.dumps({"made": made, "deleted": gone}))
