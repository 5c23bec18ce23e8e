"""VM nodes (qemu under TCG, their own Debian kernel, two NICs, /data01 on a disk of their
own) for what container nodes cannot do: kernel NFS. Runs last: it replaces the container
lab with a lab of two VM nodes, kvm01 the NFS server and kvm02 a client."""
import json
import re
import time

import pytest

from lab import control, net, saltcfg
from lab.report import summarize

from labtest import Lab, record_timing, show


@pytest.fixture(scope="module")
def vm_lab(lab):  # noqa: ARG001  (after the container lab's tests)
    control.down()
    state = control.up(containers=0, vms=2)
    vms = Lab(state)
    pillar = json.loads(json.dumps(vms.pillar))
    pillar["kvmcluster"]["storage"]["secondary"] = {"enabled": True, "server": "kvm01"}
    # TCG nodes are slow and a bond has four interfaces: the default timeout, not the lab's.
    pillar["kvmcluster"]["network"]["rollback_timeout"] = 90
    for node in ("kvm01", "kvm02"):
        # bond0 (802.3ad by default) of both NICs under br0. The lab switch carries 1500.
        entry = pillar["kvmcluster"]["nodes"][node]
        del entry["nic"]
        entry["bond"] = {"slaves": ["eth0", "eth1"], "mtu": 1500}
    vms.pillar = pillar
    vms.reset_pillar()
    yield vms
    control.down()


def test_vm_node_has_its_own_kernel(vm_lab):
    out = vm_lab.ssh("kvm01", "modprobe bonding && cat /sys/class/net/bonding_masters; "
                              "findmnt -n -o SOURCE,FSTYPE /data01; ls /sys/class/net; "
                              "systemctl is-system-running")
    assert "/dev/vdb ext4" in out          # a real block device, not a bind mount
    assert "eth0" in out and "eth1" in out  # two NICs, for bonds
    assert out.split()[-1] == "running"


def test_vm_nodes_over_salt_ssh(vm_lab):
    results, proc = vm_lab.apply("kvmcluster.info")
    assert proc.returncode == 0, proc.stdout[-2000:]
    for node in ("kvm01", "kvm02"):
        key = next(k for k in results[node] if k.endswith("_|-reported"))
        facts = json.loads(results[node][key]["comment"])
        assert facts["id"] == node and facts["model"]["ip"] == vm_lab.ip[node]


POOL_PY = r"""
import json, sys, libvirt
c = libvirt.open("qemu:///system")
p = c.storagePoolLookupByName("secondary")
action = sys.argv[1]
if action == "create":
    p.createXML("<volume><name>%s</name><capacity unit='MiB'>8</capacity>"
                "<target><format type='raw'/></target></volume>" % sys.argv[2], 0)
p.refresh(0)
print(json.dumps({"active": p.isActive(), "autostart": p.autostart(),
                  "volumes": sorted(p.listVolumes()),
                  "type": p.XMLDesc(0).split("type='", 1)[1].split("'")[0]}))
"""


def pool(vm_lab, node, *args):
    return json.loads(vm_lab.ssh(node, "cat > /tmp/pool.py && python3 /tmp/pool.py "
                                       + " ".join(args), input=POOL_PY))


def rich_rules(vm_lab, node, permanent=False):
    flag = "--permanent " if permanent else ""
    return sorted(vm_lab.ssh(node, f"firewall-cmd {flag}--zone=public --list-rich-rules")
                  .strip().splitlines())


def tcp_probe(vm_lab, node, host, port):
    """How a TCP connect from ``node`` to host:port ends: connected, refused, or the errno."""
    code = ("import socket,sys\ns=socket.socket()\ns.settimeout(5)\n"
            f"try:\n s.connect(('{host}',{port}));print('connected')\n"
            "except OSError as e:\n print(e.strerror or type(e).__name__)")
    return vm_lab.ssh(node, "python3 -", input=code).strip()


def test_secondary_storage_over_nfs(vm_lab):
    for node in ("kvm01", "kvm02"):
        # firewalld as on a default EL host: running, default zone public, nothing opened.
        assert vm_lab.ssh(node, "firewall-cmd --state").strip() == "running"
        assert rich_rules(vm_lab, node) == []
    predicted, _ = vm_lab.apply("kvmcluster", "test=True")
    t0 = time.monotonic()
    results, proc = vm_lab.apply()
    first = time.monotonic() - t0
    for node in ("kvm01", "kvm02"):
        s = summarize(results[node])
        assert s["failed"] == 0, s["failures"]
        # test=True on the fresh VM nodes said exactly what the real run changed.
        for key, real in results[node].items():
            assert predicted[node][key]["changes"] == real["changes"], (node, key)
    # The NFS server lets its clients in for nfs, rpc-bind and mountd; each node lets the
    # other in for migration; the rules are runtime and permanent alike.
    nfs = [f'rule family="ipv4" source address="{c}" service name="{svc}" accept'
           for c in ("172.30.10.41", "172.30.10.42") for svc in ("mountd", "nfs", "rpc-bind")]
    mig = ('rule family="ipv4" source address="{}" port port="%d-%d" protocol="tcp" accept'
           % saltcfg.MIGRATION_PORTS)
    assert rich_rules(vm_lab, "kvm01") == sorted(nfs + [mig.format("172.30.10.42")])
    assert rich_rules(vm_lab, "kvm02") == [mig.format("172.30.10.41")]
    for node in ("kvm01", "kvm02"):
        assert rich_rules(vm_lab, node, permanent=True) == rich_rules(vm_lab, node)
        show(f"firewalld on {node} (VM node), zone public, runtime = permanent",
             "\n".join(rich_rules(vm_lab, node)))
    # Through the firewall: NFS connects, a port nobody opened is rejected by firewalld.
    assert tcp_probe(vm_lab, "kvm02", "172.30.10.41", 2049) == "connected"
    assert tcp_probe(vm_lab, "kvm02", "172.30.10.41", 16514) == "No route to host"
    exports = vm_lab.ssh("kvm01", "cat /etc/exports.d/kvmcluster.exports; exportfs -v")
    assert '"/data01/secondary" 172.30.10.41(rw,sync,no_subtree_check,no_root_squash) ' \
           "172.30.10.42(rw,sync,no_subtree_check,no_root_squash)" in exports
    assert "/data01/secondary\n\t\t172.30.10.42(" in exports or \
           "/data01/secondary\t172.30.10.42(" in exports
    mnt = vm_lab.ssh("kvm02", "findmnt -n -o SOURCE,FSTYPE,OPTIONS /mnt/secondary; "
                              "grep /mnt/secondary /etc/fstab")
    assert mnt.startswith("172.30.10.41:/data01/secondary nfs4 ")
    assert "hard" in mnt and "timeo=600" in mnt
    assert "172.30.10.41:/data01/secondary /mnt/secondary nfs vers=4.2,hard,timeo=600," \
           "retrans=2,_netdev 0 0" in mnt
    srv = vm_lab.ssh("kvm01", "findmnt -n -o SOURCE /mnt/secondary")
    assert srv.strip().endswith("[/secondary]")  # the server's bind mount of its export
    assert pool(vm_lab, "kvm01", "list")["type"] == "dir"
    client = pool(vm_lab, "kvm02", "create", "made-on-kvm02.img")
    assert client["type"] == "netfs" and client["active"] and client["autostart"]
    server = pool(vm_lab, "kvm01", "list")  # refreshed by the script
    assert "made-on-kvm02.img" in server["volumes"] and server["active"] and server["autostart"]
    t0 = time.monotonic()
    again, proc = vm_lab.apply()
    record_timing("salt-ssh state.apply with NFS, second run, 2 VM nodes (TCG)",
                  time.monotonic() - t0)
    for node in ("kvm01", "kvm02"):
        assert summarize(again[node])["changed"] == 0, summarize(again[node])["changed_ids"]
    record_timing("salt-ssh state.apply with NFS, first run, 2 VM nodes (TCG)", first)
    for node in ("kvm01", "kvm02"):
        took = next(v for k, v in results[node].items() if "bridge-managed" in k)["comment"]
        record_timing(f"takeover of bond0 (eth0+eth1) by br0 on {node} (VM, ifupdown), "
                      "transaction until the local check passed",
                      float(re.search(r"took over in ([\d.]+)s", took).group(1)))


def test_bond0_under_br0_on_vm_nodes(vm_lab):
    for node in ("kvm01", "kvm02"):
        bonding = vm_lab.ssh(node, "cat /proc/net/bonding/bond0")
        assert "Bonding Mode: IEEE 802.3ad Dynamic link aggregation" in bonding, bonding
        assert "Transmit Hash Policy: layer3+4 (1)" in bonding, bonding
        assert "MII Polling Interval (ms): 100" in bonding, bonding
        assert "LACP rate: slow" in bonding, bonding
        assert bonding.count("Slave Interface: ") == 2
        assert "Slave Interface: eth0" in bonding and "Slave Interface: eth1" in bonding
        links = {ln["ifname"]: ln for ln in json.loads(vm_lab.ssh(node, "ip -j addr show"))}
        for nic in ("eth0", "eth1"):
            assert links[nic].get("master") == "bond0", links[nic]
            assert not [a for a in links[nic]["addr_info"] if a["family"] == "inet"]
        assert links["bond0"].get("master") == "br0"
        assert [a["local"] for a in links["br0"]["addr_info"] if a["family"] == "inet"] == [
            vm_lab.ip[node]]
        assert links["br0"]["address"] == links["eth0"]["address"]
        assert vm_lab.ssh(node, "hostname").strip() == node  # reachable through br0


def test_unreachable_nfs_server_fails_in_bounded_time(vm_lab):
    # Let go of the share cleanly first: a hard mount of a vanished server blocks readers.
    vm_lab.ssh("kvm02", "virsh pool-destroy secondary; umount /mnt/secondary; "
                        "findmnt /mnt/secondary || true", check=False)
    taps = ["t-kvm01-0", "t-kvm01-1"]  # both legs of kvm01's bond
    for tap in taps:
        net.nsexec(net.SWITCH, "ip", "link", "set", tap, "down")
    try:
        results, _ = vm_lab.apply_on("kvm02")
    finally:
        for tap in taps:
            net.nsexec(net.SWITCH, "ip", "link", "set", tap, "up")
    res = results["kvm02"]
    mounted = res[next(k for k in res if "secondary-mounted" in k)]
    assert mounted["result"] is False
    assert "NFS server kvm01 (172.30.10.41) is unreachable" in mounted["comment"]
    assert mounted["duration"] / 1000 <= 60, mounted["duration"]
    # What does not need the share still ran and holds.
    for sid in ("kvmcluster-libvirt-service-running", "kvmcluster-storage-primary-pool-present"):
        assert res[next(k for k in res if f"_|-{sid}_|-" in k)]["result"] is True
    record_timing("NFS mount state failing on an unreachable server", mounted["duration"] / 1000)
    healed, _ = vm_lab.apply_on("kvm02")
    assert summarize(healed["kvm02"])["failed"] == 0


GUESTS_PY = r"""
import json, os, subprocess, time, libvirt
c = libvirt.open("qemu:///system")
out = {}
for pool_name in ("default", "secondary"):
    name = f"aa-{pool_name}"
    pool = c.storagePoolLookupByName(pool_name)
    vol = pool.createXML(f"<volume><name>{name}.qcow2</name><capacity unit='MiB'>16</capacity>"
                         "<target><format type='qcow2'/></target></volume>", 0)
    dom = c.defineXML(f'''<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
      <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{vol.path()}'/><target dev='vda' bus='virtio'/></disk>
      <console type='pty'/></devices></domain>''')
    dom.create()
    time.sleep(3)
    pid = int(open(f"/run/libvirt/qemu/{name}.pid").read())
    label = open(f"/proc/{pid}/attr/current").read().strip()
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    out[pool_name] = {"active": dom.isActive(), "path": vol.path(), "label": label,
                      "disk_open": vol.path() in fds,
                      "seclabel": dom.XMLDesc(0).split("<seclabel")[1].split(">")[0]}
    dom.destroy(); dom.undefine(); vol.delete(0)
print(json.dumps(out))
"""


def test_apparmor_guests_start_without_a_global_rule(vm_lab):
    """AppArmor active, no pool-wide rule (the default): libvirt's per-guest profile lets a
    guest open its own disk in the primary pool and in the NFS-backed secondary pool."""
    node = "kvm02"
    assert vm_lab.ssh(node, "cat /sys/module/apparmor/parameters/enabled").strip() == "Y"
    abstraction = vm_lab.ssh(node, "cat /etc/apparmor.d/local/abstractions/libvirt-qemu "
                                   "2>/dev/null || true")
    assert "kvmcluster" not in abstraction and "rwk" not in abstraction
    got = json.loads(vm_lab.ssh(node, "python3 -", input=GUESTS_PY, timeout=300))
    for pool_name, g in got.items():
        assert g["active"] == 1 and g["disk_open"], (pool_name, g)
        assert g["label"].startswith("libvirt-") and g["label"].endswith("(enforce)"), g
        assert "apparmor" in g["seclabel"], g
    show("AppArmor guests on kvm02 (no pool-wide rule)",
         "\n".join(f"{p}: active={g['active']} disk={g['path']} label={g['label']}"
                   for p, g in sorted(got.items())))
    assert got["secondary"]["path"].startswith("/mnt/secondary/")
    assert got["default"]["path"].startswith("/data01/primary/")
