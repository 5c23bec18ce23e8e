"""VMs from pillar on the lab: two container nodes and the management node, the golden image
on a shared directory every node mounts (storage type external), tiny emulated guests that
lease their address and name by DHCP from the management node and print them on their
serial console (a file on their node)."""
import hashlib
import json
import subprocess
import threading
import time

import pytest

from lab import control, guest, net, paths, saltcfg
from lab import capture
from lab.capture import Capture, PortWatch
from lab.report import summarize
from labtest import Lab, SecretScan, debug_lines, key_needles, record_timing, show

DOMAIN = "lab.kvmcluster.test"
NODES = ["mgmt01", "kvm01", "kvm02"]
HOME_OF = {name: vm["node"] for name, vm in saltcfg.LAB_VMS.items()}
STATE_ID = "kvmcluster_vm_|-kvmcluster-vms-managed_|-kvmcluster-vms-managed_|-managed"


@pytest.fixture(scope="module")
def vms_lab():
    control.down()
    # Each container node has a second NIC on a network of its own (the site's migration
    # network, configured by the lab as a site would, used only where a test asks).
    state = control.up(containers=2, management=1, migration_net=True)
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
    put back (a VM another test moved is migrated home, one it removed or stopped is made
    again or started)."""
    vms_lab.reset_pillar()
    placed = saltcfg.salt_run("kvmcluster.place", "ssh=True", "--out=json", timeout=900)
    assert placed.returncode == 0, placed.stdout[-2000:] + placed.stderr[-1500:]
    results, proc = vms_lab.apply()
    for n in NODES:
        assert summarize(results[n])["failed"] == 0, (n, summarize(results[n])["failures"],
                                                      proc.stdout[-1500:])
    for vm in saltcfg.LAB_VMS:
        console_line(vms_lab, vm, guest.READY_MARKER, 150)
    return vms_lab


def console(lab, vm, node=None):
    return lab.ssh(node or HOME_OF[vm],
                   f"cat /var/log/libvirt/qemu/{vm}-console.log 2>/dev/null || true")


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
    assert set(vm_result(first, "kvm01")["changes"]) == {"vm1", "vm4"}
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


# ---- the cluster view and live migration ----------------------------------------------

def run_json(*args, timeout=900):
    proc = saltcfg.salt_run(*args, "--out=json", timeout=timeout)
    try:
        return json.loads(proc.stdout), proc
    except ValueError as exc:
        raise AssertionError(proc.stdout[-2000:] + proc.stderr[-2000:]) from exc


def errors_of(data):
    return [(f["node"], f["what"]) for f in data["findings"] if f["level"] == "error"]


def running_on(lab, vm):
    """The nodes whose libvirt runs ``vm`` (libvirt binding, through kvmcluster_vm.list)."""
    proc = saltcfg.salt_ssh("kvm*", "kvmcluster_vm.list", "--out=json", "--static",
                            timeout=300)
    got = json.loads(proc.stdout)
    return sorted(n for n, vms in got.items() if (vms.get(vm) or {}).get("state") == "running")


def ticks(text):
    return [int(ln.split()[1]) for ln in text.splitlines()
            if ln.startswith(guest.TICK_MARKER + " ") and ln.split()[1].isdigit()]


def test_status_of_the_cluster_then_each_fault_named(at_base):
    lab = at_base
    t0 = time.monotonic()
    table = saltcfg.salt_run("kvmcluster.status", "ssh=True", timeout=300)
    record_timing("salt-run kvmcluster.status ssh=True, converged, 3 nodes",
                  time.monotonic() - t0)
    assert table.returncode == 0, table.stdout[-3000:] + table.stderr[-1500:]
    show("salt-run kvmcluster.status ssh=True (converged)", table.stdout.strip())
    data, _ = run_json("kvmcluster.status", "ssh=True")
    assert errors_of(data) == [] and sorted(data["nodes"]) == sorted(NODES)
    assert data["nodes"]["kvm01"]["share"]["fstype"] == "fuse.glusterfs"
    # Faults: kvm01's bridge MTU by hand, kvm02's share gone, mgmt01 off the network.
    lab.ssh("kvm01", "ip link set br0 mtu 1400")
    lab.ssh("kvm02", "umount -l /mnt/secondary")
    subprocess.run(["ip", "netns", "exec", "kvl-sw", "ip", "link", "set", "v-mgmt01", "down"],
                   check=True)
    try:
        t0 = time.monotonic()
        faulty = saltcfg.salt_run("kvmcluster.status", "ssh=True", "timeout=15", timeout=300)
        took = time.monotonic() - t0
        record_timing("salt-run kvmcluster.status ssh=True with 3 faults (one node down)", took)
        assert faulty.returncode == 1, faulty.stdout[-3000:]
        show("salt-run kvmcluster.status ssh=True: MTU changed on kvm01, share unmounted on "
             f"kvm02, mgmt01 down (exit {faulty.returncode}, {took:.1f} s)",
             faulty.stdout.strip())
        assert took < 90
        data, _ = run_json("kvmcluster.status", "ssh=True", "timeout=15")
        errs = errors_of(data)
        assert ("kvm01", "bridge br0 MTU 1400, the model says 1500") in errs, errs
        assert ("kvm02", "shared storage /mnt/secondary is not mounted") in errs, errs
        assert any(n == "mgmt01" and w.startswith("unreachable:") for n, w in errs), errs
    finally:
        subprocess.run(["ip", "netns", "exec", "kvl-sw", "ip", "link", "set", "v-mgmt01",
                        "up"], check=True)
        lab.ssh("kvm01", "ip link set br0 mtu 1500")
        # The share comes back with the node's bind mount: reboot kvm02 (its VMs autostart).
        lab.ssh("kvm02", "systemd-run --on-active=1 systemctl reboot")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until it is back, share and all (bounded)
            up = lab.ssh("kvm02", "findmnt -n -o FSTYPE /mnt/secondary && "
                                  "systemctl is-system-running", check=False, timeout=20)
            if up.split()[:2] in (["fuse.glusterfs", "running"],
                                  ["fuse.glusterfs", "degraded"]):
                break
            time.sleep(3)
    assert lab.ssh("kvm02", "findmnt -n -o FSTYPE /mnt/secondary").strip() == "fuse.glusterfs"


def migrate(vm, target, *extra):
    t0 = time.monotonic()
    data, proc = run_json("kvmcluster.migrate", f"vm={vm}", f"target={target}", "ssh=True",
                          *extra)
    return data, proc, time.monotonic() - t0


class Listeners:
    """The TCP ports above 49151 that listen in a node's network namespace, sampled every
    20 ms while the block runs (at most 120 s): where a migration's incoming side listens
    (``ports``, and ``sockets``: address:port as ss prints them)."""

    def __init__(self, node):
        self.argv = ["ip", "netns", "exec", net.PREFIX + node, "ss", "-Hltn"]
        self.ports, self.sockets, self.stop = set(), set(), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            out = subprocess.run(self.argv, capture_output=True, text=True, timeout=10,
                                 check=False).stdout
            for line in out.splitlines():
                port = int(line.split()[3].rsplit(":", 1)[1])
                if port > 49151:
                    self.ports.add(port)
                    self.sockets.add(line.split()[3])
            self.stop.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def test_the_migration_key_never_leaves_the_management_node(at_base):
    """A full apply, status and a live migration over salt-ssh, with debug logs: the
    private key's body is in no process's argv (sampled every 20 ms on this machine, the
    nodes' processes included), no log or cache file of the management node or the nodes,
    and no runner output."""
    lab = at_base
    priv = lab.pillar["kvmcluster"]["migration"]["ssh"]["private_key"]
    assert priv and "PRIVATE KEY" in priv
    scan = SecretScan(key_needles(priv))
    debug = "--log-file-level=debug"
    with scan:
        applied = saltcfg.salt_ssh("*", "state.apply", "kvmcluster", "--out=json", "--static",
                                   debug, timeout=900)
        status = saltcfg.salt_run("kvmcluster.status", "ssh=True", debug, timeout=300)
        moved, proc, took = migrate("vm1", "kvm02", debug)
    assert applied.returncode == 0, applied.stdout[-1500:] + applied.stderr[-1500:]
    assert status.returncode == 0, status.stdout[-1500:] + status.stderr[-1500:]
    assert moved.get("retcode", 0) == 0 and running_on(lab, "vm1") == ["kvm02"], moved
    for what, out in (("salt-ssh state.apply", applied), ("status", status),
                      ("migrate", proc)):
        scan.text(what, out.stdout + out.stderr)
    logs = [paths.HOME / "nodes" / n / "root" / "var" / "log" for n in NODES]
    # The job cache, where salt keeps calls' arguments and returns (the pillar source and
    # the file client's copy of it are the management node's own, and stay there).
    # Salt puts its log files under root_dir (wherever log_file points).
    salt_logs = sorted(saltcfg.SALT_DIR.rglob("*.log"))
    ssh_log = next(p for p in salt_logs if p.name == "ssh.log")
    read = scan.files(*salt_logs, saltcfg.SALT_DIR / "root" / "cache" / "jobs", *logs)
    scan.assert_clean("the migration key's body, looked for during apply + status + migrate "
                      "(salt-ssh)", read, outputs=3,
                      debug_lines_in_ssh_log=debug_lines(ssh_log))


def test_live_migration_with_a_copied_disk_and_with_a_shared_disk(at_base):
    lab = at_base
    low, high = saltcfg.MIGRATION_PORTS
    for node in ("kvm01", "kvm02"):  # QEMU's incoming ports: migration:ports, not its own
        conf = lab.ssh(node, "grep -E '^migration_port_(min|max) ' /etc/libvirt/qemu.conf; "
                       "stat -c %a /etc/libvirt/qemu.conf").split("\n")
        assert conf[:3] == [f"migration_port_min = {low}", f"migration_port_max = {high}",
                            "600"], conf
    for vm, how in (("vm1", "node-local disk copied"), ("vm4", "disk on the shared storage")):
        before = ticks(console(lab, vm, "kvm01"))
        assert before, f"{vm} prints no counter on kvm01"
        seen = len(console(lab, vm, "kvm02"))  # an earlier visit's lines are not this one's
        with Listeners("kvm02") as listening:
            data, proc, took = migrate(vm, "kvm02", "progress=1")
        assert proc.returncode == 0 and data["migrated"], data
        assert isinstance(data["certificates"], dict), data  # over TLS (the default)
        # The incoming side (QEMU, and the disk copy's NBD server) listened in the range the
        # firewall opens to the peers, and nowhere else above 49151.
        assert listening.ports and all(low <= p <= high for p in listening.ports), \
            sorted(listening.ports)
        assert data["copied"] == (["vda"] if vm == "vm1" else []), data
        after = []
        deadline = time.monotonic() + 30
        while len(after) < 2 and time.monotonic() < deadline:
            after = ticks(console(lab, vm, "kvm02")[seen:])
            time.sleep(1)
        # The counter goes on from where kvm01's console left it: the guest never restarted.
        left = ticks(console(lab, vm, "kvm01"))[-1]
        assert after and after[0] > 1 and 0 < after[0] - left <= 2, (left, after[:3])
        assert after == list(range(after[0], after[0] + len(after))), after[:10]
        assert running_on(lab, vm) == ["kvm02"]
        listed = {n: lab.ssh(n, "virsh list --all --name").split() for n in ("kvm01", "kvm02")}
        assert vm not in listed["kvm01"] and vm in listed["kvm02"], listed
        record_timing(f"live migration of {vm} kvm01 -> kvm02 ({how}): libvirt downtime ms",
                      data["downtime_ms"])
        record_timing(f"live migration of {vm} kvm01 -> kvm02 ({how}): migration s",
                      data["seconds"])
        record_timing(f"live migration of {vm} kvm01 -> kvm02 ({how}): runner total s", took)
        show(f"{vm} migrated live kvm01 -> kvm02 ({how}, stream over TLS)",
             f"downtime {data['downtime_ms']} ms, migration {data['seconds']} s, runner "
             f"{data['total_seconds']} s, copied {data['copied']}, source cleanup "
             f"{data.get('source_cleanup')}\nlistening on kvm02 meanwhile (above 49151): "
             f"{sorted(listening.ports)}\nlast tick on kvm01's console: {left}, first on "
             f"kvm02's: {after[0]}\nvirsh list kvm01: {listed['kvm01']}\n"
             f"virsh list kvm02: {listed['kvm02']}")
    # The copy left on kvm01 went with the move; the shared disk stays where it is.
    assert "vm1.qcow2" not in lab.ssh("kvm01", "ls /data01/primary").split()
    assert (paths.SHARED / "vm4.qcow2").exists()
    # Home again, capped at 16 MiB/s: long enough to watch, a progress line each interval
    # (data sent and remaining, from libvirt's statistics of the job on the source).
    data, proc, took = migrate("vm1", "kvm01", "progress=1", "bandwidth=16")
    assert proc.returncode == 0 and data["migrated"], data
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("migrating vm1 ")]
    show("vm1 kvm02 -> kvm01 at bandwidth=16 (MiB/s), progress=1: the runner's lines on "
         f"stderr (migration {data['seconds']} s, downtime {data['downtime_ms']} ms)",
         "\n".join(lines) or "none")
    assert sum(" sent " in ln and " remaining" in ln for ln in lines) >= 2, proc.stderr[-3000:]
    assert data["seconds"] >= 4, data  # the cap held: 160 MiB of memory at 16 MiB/s


CPUODD_PY = r"""
import libvirt
c = libvirt.open("qemu:///system")
d = c.defineXML('''<domain type='qemu'><name>cpuodd</name><memory unit='MiB'>96</memory>
<os><type arch='x86_64'>hvm</type><kernel>/mnt/secondary/boot/vmlinuz</kernel>
<initrd>/mnt/secondary/boot/tiny-initrd</initrd><cmdline>console=ttyS0 panic=-1</cmdline></os>
<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>Icelake-Server</model></cpu>
<devices><serial type='pty'/></devices></domain>''')
d.create()
print(d.isActive())
"""
CPUODD_GONE_PY = r"""
import libvirt
c = libvirt.open("qemu:///system")
for d in c.listAllDomains(0):
    if d.name() == "cpuodd":
        if d.isActive():
            d.destroy()
        d.undefine()
"""


def test_migration_refused_before_anything_moves(at_base):
    lab = at_base
    # No room on the target: the pillar's reserve takes all of its memory.
    tight = with_edit(lab)
    tight["kvmcluster"]["vm"]["memory_reserve_mb"] = 1 << 22
    lab.set_pillar(tight)
    try:
        data, proc, _ = migrate("vm1", "kvm02")
    finally:
        lab.reset_pillar()
    assert proc.returncode == 1 and not data["migrated"], data
    assert any(r.startswith("memory: ") for r in data["refused"]), data["refused"]
    show("migration refused: capacity", "\n".join(data["refused"]))
    assert running_on(lab, "vm1") == ["kvm01"]
    # A CPU model the target's hypervisor cannot give (simulated: a VM defined by hand with
    # a model this lab's emulated CPU lacks; check='none' lets it start degraded on kvm01).
    assert lab.ssh("kvm01", "python3 -", input=CPUODD_PY).strip() == "1"
    try:
        data, proc, _ = migrate("cpuodd", "kvm02")
        assert proc.returncode == 1 and not data["migrated"], data
        assert data["refused"] == ["the CPU model it is defined with, Icelake-Server (and its "
                                   "features), is not available to qemu guests on kvm02"], data
        show("migration refused: CPU", "\n".join(data["refused"]))
        assert running_on(lab, "cpuodd") == ["kvm01"]
        assert "cpuodd" not in lab.ssh("kvm02", "virsh list --all --name").split()
    finally:
        lab.ssh("kvm01", "python3 -", input=CPUODD_GONE_PY)


def test_a_placement_change_moves_the_vm_live_one_copy_only(at_base):
    lab = at_base
    before = ticks(console(lab, "vm1", "kvm01"))
    seen = len(console(lab, "vm1", "kvm02"))
    lab.set_pillar(with_edit(lab, vm1={"node": "kvm02"}))
    try:
        # Applied alone, kvm02 refuses to start a second vm1: it answers on kvm01.
        alone, _ = lab.apply_on("kvm02")
        res = vm_result(alone, "kvm02")
        assert res["result"] is False and res["changes"] == {}, res
        assert "vm1 is not on kvm02 but answers at 172.30.10.111" in res["comment"], res
        show("kvm02 refuses a second copy of vm1", res["comment"])
        t0 = time.monotonic()
        proc = saltcfg.salt_run("state.orchestrate", "kvmcluster.orch.vms",
                                'pillar={"ssh": true}', "--out=json", timeout=1200)
        record_timing("placement change of vm1 by the orchestration (migrate + apply)",
                      time.monotonic() - t0)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1500:]
        assert running_on(lab, "vm1") == ["kvm02"]
        assert "vm1" not in lab.ssh("kvm01", "virsh list --all --name").split()
        after = ticks(console(lab, "vm1", "kvm02")[seen:])
        assert after and after[0] >= before[-1] > 0, (before[-2:], after[:2])
        again, _ = lab.apply()
        for n in NODES:
            assert summarize(again[n])["changed"] == 0, (n, summarize(again[n])["changed_ids"])
    finally:
        lab.reset_pillar()


def spoof_lines(lab, vm, node, after=0):
    text = console(lab, vm, node)[after:]
    return [ln.split()[2:] for ln in text.splitlines()
            if ln.startswith(guest.SPOOF_MARKER + " ")]


def wait_spoof(lab, vm, node, want, after=0, timeout=120):
    """The console's spoof lines past byte ``after`` until three in a row say ``want``."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        lines = spoof_lines(lab, vm, node, after)
        if len(lines) >= 3 and all(ln == want for ln in lines[-3:]):
            return lines
        time.sleep(2)
    raise AssertionError(f"{vm}: not three {want} in a row within {timeout}s: {lines[-6:]}")


def test_a_spoofing_guest_reaches_nothing_while_its_own_address_works(at_base):
    """clean-traffic on the guest's NIC: from an address that is not its own it reaches
    nobody, from its own it does; with the filter off (antispoof: false, applied live) the
    same guest's spoofed pings are answered, so the test can fail."""
    lab = at_base
    spoofed = f"{saltcfg.SUBNET_BASE}.150"  # nobody's address
    peer = lab.ip["mgmt01"]
    pillar = with_edit(lab, spoof1={"node": "kvm01", "image": "tiny-spoof",
                                    "ip": f"{saltcfg.SUBNET_BASE}.115"})
    k = pillar["kvmcluster"]
    k["images"]["tiny-spoof"] = dict(k["images"]["tiny"], cmdline=(
        f"{k['images']['tiny']['cmdline']} kvmcluster.spoof={spoofed} kvmcluster.peer={peer}"))
    try:
        lab.set_pillar(pillar)
        applied, proc = lab.apply()
        for n in NODES:
            assert summarize(applied[n])["failed"] == 0, (n, summarize(applied[n])["failures"],
                                                          proc.stdout[-1500:])
        xml = lab.ssh("kvm01", "virsh dumpxml spoof1")
        assert "<filterref filter='kvmcluster-guest'>" in xml, xml
        filtered = wait_spoof(lab, "spoof1", "kvm01", ["spoofed=blocked", "own=reached"])
        rules = lab.ssh("kvm01", "ebtables -t nat -L 2>/dev/null | head -40")
        # The filter off, live: the same guest's spoofed pings now get answers.
        seen = len(console(lab, "spoof1", "kvm01"))
        k["vms"]["spoof1"]["antispoof"] = False
        lab.set_pillar(pillar)
        off, proc = lab.apply_on("kvm01")
        ch = off["kvm01"][STATE_ID]["changes"]
        assert "spoof1: traffic filter changed" in off["kvm01"][STATE_ID]["comment"], off
        assert ch == {"spoof1": {"old": {"filter": f"kvmcluster-guest IP={saltcfg.SUBNET_BASE}"
                                                   ".115"}, "new": {"filter": "none"}}}, ch
        live = lab.ssh("kvm01", "virsh dumpxml spoof1 | grep -c filterref || true; "
                                "virsh nwfilter-binding-list")
        try:
            open_ = wait_spoof(lab, "spoof1", "kvm01", ["spoofed=reached", "own=reached"],
                               seen)
        except AssertionError as exc:
            extra = lab.ssh("kvm01", "ebtables -t nat -L 2>&1 | head -60; "
                                     "ip neigh; cat /proc/sys/net/ipv4/conf/all/arp_ignore",
                            check=False)
            mg = lab.ssh("mgmt01", f"ip neigh show {spoofed}; ping -c1 -W1 {spoofed}",
                         check=False)
            raise AssertionError(f"{exc}\nlive filterrefs, bindings:\n{live}\n{extra}\n"
                                 f"mgmt01: {mg}") from None
        assert live.split()[0] == "0", live  # the running guest's NIC has no filter now
        show("a guest pinging mgmt01 from an address not its own (spoof1 on kvm01, "
             f"spoofed {spoofed})",
             f"with clean-traffic: {filtered[-3:]}\nwith antispoof false: {open_[-3:]}\n"
             f"ebtables nat on kvm01 (head):\n{rules}")
    finally:
        pillar = with_edit(lab, spoof1={"node": "kvm01", "image": "tiny", "state": "absent"})
        lab.set_pillar(pillar)
        lab.apply_on("kvm01")
        lab.reset_pillar()


def test_the_migration_stream_holds_guest_memory_in_clear_only_under_plaintext(at_base,
                                                                              tmp_path):
    """A capture on the lab switch of the migration ports while vm1 (its disk copied)
    moves: under the defaults (TLS) the string the guest holds in memory is not in it, with
    migration:plaintext true it is; so the test can fail."""
    lab = at_base
    seen = {}
    for mode in ("tls", "plaintext"):
        if mode == "plaintext":
            pillar = with_edit(lab)
            pillar["kvmcluster"]["migration"]["plaintext"] = True
            lab.set_pillar(pillar)
            for n in ("kvm01", "kvm02"):
                applied, proc = lab.apply_on(n)
                assert summarize(applied[n])["failed"] == 0, proc.stdout[-1500:]
            conf = lab.ssh("kvm02", "grep -E '^migrate_tls_force' /etc/libvirt/qemu.conf")
            assert conf.strip() == "migrate_tls_force = 0", conf
        with Capture(net.SWITCH, saltcfg.MIGRATION_PORTS, guest.MEMORY_MARKER,
                     tmp_path / f"{mode}.json") as cap:
            data, proc, _ = migrate("vm1", "kvm02")
        assert proc.returncode == 0 and data["migrated"], data
        back, proc, _ = migrate("vm1", "kvm01")
        assert proc.returncode == 0 and back["migrated"], back
        seen[mode] = (cap.result, data)
    tls, clear = seen["tls"][0], seen["plaintext"][0]
    # Both captures saw the whole move: more bytes than the guest's memory in use.
    assert tls["bytes"] > 8 << 20 and clear["bytes"] > 8 << 20, seen
    assert tls["found"] == 0 and tls["tls_flows"] >= 1, tls
    # The guest holds 20,000 copies: in clear, a capture that lost a few segments still
    # sees hundreds.
    assert clear["found"] >= 100 and clear["tls_flows"] == 0, clear
    for mode, (_, data) in seen.items():
        record_timing(f"live migration of vm1 kvm01 -> kvm02 (disk copied, {mode}): "
                      "libvirt downtime ms", data["downtime_ms"])
        record_timing(f"live migration of vm1 kvm01 -> kvm02 (disk copied, {mode}): "
                      "migration s", data["seconds"])
    show("the migration ports captured on the lab switch while vm1 moved kvm01 -> kvm02",
         "\n".join(f"{mode}: {cap['bytes'] / (1 << 20):.1f} MiB in {cap['packets']} segments, "
                   f"{cap['flows']} flows ({cap['tls_flows']} opening with a TLS handshake), "
                   f"guest memory marker found {cap['found']} times, {cap['dropped']} frames "
                   f"dropped by the capture; migration "
                   f"{data['seconds']} s, downtime {data['downtime_ms']} ms"
                   for mode, (cap, data) in seen.items()))


def test_certificates_issued_renewed_and_shown_in_status(at_base):
    """Each node's certificate from the cluster's CA (valid 2 h in the lab): kept while
    good, issued again when fewer hours are left than renew_hours says, its expiry in the
    status table; the CA's key stays on the management node."""
    lab = at_base
    first, proc = run_json("kvmcluster.certificates", "ssh=True", "tgt=kvm*")
    assert proc.returncode == 0, first
    assert sorted(first["certificates"]) == ["kvm01", "kvm02"]
    before = {n: c["not_after"] for n, c in first["certificates"].items()}
    for n, c in first["certificates"].items():
        assert c["signed_by_ca"] and c["key_matches"], c
        assert lab.ip[n] in c["ips"] and n in c["dns"], c
        # Root and QEMU's group read the key; nobody else.
        mode = lab.ssh(n, "stat -c '%a %U %G' /etc/pki/qemu/server-key.pem").split()
        assert mode == ["640", "root", "libvirt-qemu"], mode
        assert lab.ssh(n, "ls /etc/pki/qemu | grep -c ca-key || true").strip() == "0"
    kept, _ = run_json("kvmcluster.certificates", "ssh=True", "tgt=kvm*")
    assert {c["action"] for c in kept["certificates"].values()} == {"kept"}, kept
    pillar = with_edit(lab)
    pillar["kvmcluster"]["migration"]["certificates"] = {"valid_hours": 6, "renew_hours": 5}
    try:
        lab.set_pillar(pillar)
        renewed, proc = run_json("kvmcluster.certificates", "ssh=True", "tgt=kvm*")
        assert proc.returncode == 0, renewed
        for n, c in renewed["certificates"].items():
            assert c["action"].startswith("issued: expires "), c
            assert c["not_after"] > before[n], (c, before[n])
        table = saltcfg.salt_run("kvmcluster.status", "ssh=True", "columns=all", timeout=300)
        rows = {ln.split()[0]: ln for ln in table.stdout.splitlines() if ln.startswith("kvm")}
        for n, c in renewed["certificates"].items():
            assert rows[n].rstrip().endswith(c["not_after"].replace("T", " ")[:16]), rows[n]
    finally:
        lab.reset_pillar()
    show("salt-run kvmcluster.certificates: issued, kept, renewed (valid 2 h, then 6 h "
         "with renew_hours 5)",
         "\n".join(f"{n}: {before[n]} -> {c['not_after']} ({c['action']})"
                    for n, c in sorted(renewed["certificates"].items()))
         + "\nstatus (columns=all):\n" + table.stdout.strip())


def hostile_lines(lab, vm, node, after=0):
    return [ln.split(None, 2)[2] for ln in console(lab, vm, node)[after:].splitlines()
            if ln.startswith(guest.HOSTILE_MARKER + " ") and len(ln.split()) == 4]


def _repair_after_takeover(lab, node_ip):
    """The lab's caches after a guest claimed a node's address and MAC with its filter
    off: neighbours and the switch's forwarding table learn the node again."""
    for ns in (net.CONTROLLER,):
        net.nsexec(ns, "ip", "neigh", "flush", "to", node_ip, check=False, capture=True)
    net.nsexec(net.SWITCH, "ip", "link", "set", net.BRIDGE, "type", "bridge", "fdb_flush",
               check=False, capture=True)
    for n in ("mgmt01", "kvm01"):
        lab.ssh(n, f"ip neigh flush to {node_ip}", check=False, timeout=30)
    lab.ssh("kvm02", f"ping -c 2 -W 2 {net.GATEWAY} >/dev/null 2>&1 || true", timeout=60)


def test_a_guest_in_a_nodes_place_reaches_nothing_while_its_neighbour_works(at_base,
                                                                          tmp_path):
    """A guest on kvm01 that takes kvm02's MAC and address, announces the address, reaches
    for mgmt01 (ping, SSH) from it and serves DHCP: with its filter, nothing of that leaves
    kvm01 (watched on kvm01's switch port), mgmt01 still knows kvm02 by kvm02's MAC, a DHCP
    client on the switch hears no second server, and vm1 on the same node answers. With the
    filter off (antispoof false, live) the same guest's frames are on the wire: the test
    can fail."""
    lab = at_base
    node_ip, peer = lab.ip["kvm02"], lab.ip["mgmt01"]
    node_mac = lab.ssh("kvm02", "cat /sys/class/net/br0/address").strip()
    pillar = with_edit(lab, rogue1={"node": "kvm01", "image": "tiny-hostile",
                                    "ip": f"{saltcfg.SUBNET_BASE}.116"})
    k = pillar["kvmcluster"]
    k["images"]["tiny-hostile"] = dict(k["images"]["tiny"], cmdline=(
        f"{k['images']['tiny']['cmdline']} kvmcluster.hostile={node_ip},{node_mac},{peer}"))
    took_off = False
    try:
        lab.set_pillar(pillar)
        applied, proc = lab.apply_on("kvm01")
        assert summarize(applied["kvm01"])["failed"] == 0, proc.stdout[-1500:]
        assert "<filterref filter='kvmcluster-guest'>" in lab.ssh("kvm01",
                                                                  "virsh dumpxml rogue1")
        deadline = time.monotonic() + 180
        while len(hostile_lines(lab, "rogue1", "kvm01")) < 2 and time.monotonic() < deadline:
            time.sleep(2)
        start = len(console(lab, "rogue1", "kvm01"))
        with PortWatch(net.SWITCH, "v-kvm01", node_ip, node_mac, tmp_path / "on.json") as on:
            offers_on = capture.offers(net.CONTROLLER, 8, tmp_path / "offers-on.json")
            while len(hostile_lines(lab, "rogue1", "kvm01", start)) < 3 \
                    and time.monotonic() < deadline:
                time.sleep(2)
            neighbour = lab.ssh("mgmt01", f"ip -j neigh show {node_ip}")
            vm1 = lab.ssh("mgmt01", f"ping -c 2 -W 2 {saltcfg.VM_IPS['vm1']} >/dev/null && "
                                    "echo answers || echo silent").strip()
        lines_on = hostile_lines(lab, "rogue1", "kvm01", start)
        w = on.result
        assert len(lines_on) >= 3 and set(lines_on) == {"ping=blocked ssh=blocked"}, lines_on
        assert w["frames"] > 0 and (w["node_mac"], w["arp_claims"], w["ip_from"],
                                    w["dhcp_server"]) == (0, 0, {}, 0), w
        assert set(offers_on) <= {peer}, offers_on
        assert all(e.get("lladdr", node_mac) == node_mac for e in json.loads(neighbour)), \
            neighbour
        assert vm1 == "answers"
        # The filter off, live: the same guest's frames leave kvm01.
        k["vms"]["rogue1"]["antispoof"] = False
        lab.set_pillar(pillar)
        took_off = True
        off, proc = lab.apply_on("kvm01")
        assert summarize(off["kvm01"])["failed"] == 0, proc.stdout[-1500:]
        start = len(console(lab, "rogue1", "kvm01"))
        with PortWatch(net.SWITCH, "v-kvm01", node_ip, node_mac, tmp_path / "off.json") as op:
            offers_off = capture.offers(net.CONTROLLER, 8, tmp_path / "offers-off.json")
            deadline = time.monotonic() + 60
            while len(hostile_lines(lab, "rogue1", "kvm01", start)) < 3 \
                    and time.monotonic() < deadline:
                time.sleep(2)
        lines_off = hostile_lines(lab, "rogue1", "kvm01", start)
        o = op.result
        assert o["node_mac"] > 0 and o["arp_claims"] > 0 and o["dhcp_server"] > 0, o
        assert o["ip_from"].get("icmp") and o["ip_from"].get("tcp/22"), o
        assert set(offers_off) - {peer}, offers_off
    finally:
        pillar = with_edit(lab, rogue1={"node": "kvm01", "image": "tiny", "state": "absent"})
        lab.set_pillar(pillar)
        lab.apply_on("kvm01")
        if took_off:
            _repair_after_takeover(lab, node_ip)
        lab.reset_pillar()
    show(f"a guest on kvm01 in kvm02's place (MAC {node_mac}, address {node_ip}, pinging and "
         f"opening SSH to mgmt01 from it, announcing it, serving DHCP), watched on kvm01's "
         "switch port",
         f"with its filter: {w['frames']} frames from kvm01's port, {w['node_mac']} with "
         f"kvm02's MAC, {w['arp_claims']} ARP claiming {node_ip}, IPv4 from it "
         f"{w['ip_from']}, {w['dhcp_server']} DHCP answers; DHCP servers a client on the "
         f"switch heard: {offers_on}; mgmt01's neighbour entry: {neighbour.strip()}; vm1 "
         f"(same node) {vm1}; the guest's own view: {lines_on[-3:]}\n"
         f"filter off (antispoof false, live): {o['frames']} frames, {o['node_mac']} with "
         f"kvm02's MAC, {o['arp_claims']} ARP claiming {node_ip}, IPv4 from it "
         f"{o['ip_from']}, {o['dhcp_server']} DHCP answers; DHCP servers heard: "
         f"{offers_off}; the guest's own view: {lines_off[-3:]}")


def test_a_migration_network_carries_the_stream_and_nothing_else_does(at_base, tmp_path):
    """networks:migration with each node's address there (eth1, on a bridge of its own):
    the move's stream crosses the migration network only (captured on kvm02's port of each
    bridge), QEMU on kvm02 listens on its migration address only, and the certificates
    carry that address."""
    lab = at_base
    low, high = saltcfg.MIGRATION_PORTS
    pillar = with_edit(lab)
    k = pillar["kvmcluster"]
    k["networks"] = {"migration": net.MIGRATION_SUBNET}
    mips = {n: net.migration_ip_of(lab.ip[n]) for n in ("kvm01", "kvm02")}
    for n, mip in mips.items():
        k["nodes"][n]["migration_ip"] = mip
    try:
        lab.set_pillar(pillar)
        for n in mips:
            applied, proc = lab.apply_on(n)
            assert summarize(applied[n])["failed"] == 0, (n, proc.stdout[-1500:])
        with Capture(net.SWITCH, saltcfg.MIGRATION_PORTS, guest.MEMORY_MARKER,
                     tmp_path / "guests.json", iface="v-kvm02") as guests_net, \
                Capture(net.SWITCH, saltcfg.MIGRATION_PORTS, guest.MEMORY_MARKER,
                        tmp_path / "mig.json", iface="m-kvm02") as mig_net, \
                Listeners("kvm02") as listening:
            data, proc, _ = migrate("vm1", "kvm02")
        assert proc.returncode == 0 and data["migrated"], data
        back, proc, _ = migrate("vm1", "kvm01")
        assert proc.returncode == 0 and back["migrated"], back
        g, m = guests_net.result, mig_net.result
        assert m["bytes"] > 8 << 20 and m["found"] == 0 and m["tls_flows"] >= 1, m
        assert g["bytes"] == 0 and g["packets"] == 0, g
        assert listening.sockets and all(sk.rsplit(":", 1)[0] == mips["kvm02"]
                                         for sk in listening.sockets), listening.sockets
        assert all(low <= p <= high for p in listening.ports), listening.ports
        certs, _ = run_json("kvmcluster.certificates", "ssh=True", "tgt=kvm*", "check_only=True")
        for n, mip in mips.items():
            assert mip in certs["certificates"][n]["ips"], certs
    finally:
        lab.reset_pillar()
    record_timing("live migration of vm1 over the migration network: libvirt downtime ms",
                  data["downtime_ms"])
    show("vm1 kvm01 -> kvm02 over networks:migration (172.30.20.0/24 on eth1)",
         f"migration network (kvm02's port): {m['bytes'] / (1 << 20):.1f} MiB in "
         f"{m['packets']} segments, {m['tls_flows']} flows opening with TLS, guest memory "
         f"marker {m['found']} times\nguests' network (kvm02's port), migration ports: "
         f"{g['bytes']} bytes\nlistening on kvm02 meanwhile: {sorted(listening.sockets)}\n"
         f"migration {data['seconds']} s, downtime {data['downtime_ms']} ms, certificates "
         f"{data['certificates']}")
