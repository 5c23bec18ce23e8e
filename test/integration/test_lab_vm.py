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
    # kvm02 boots with SELinux enforcing (Debian's refpolicy), kvm01 with AppArmor.
    state = control.up(containers=0, vms=2, selinux=("kvm02",))
    vms = Lab(state)
    pillar = json.loads(json.dumps(vms.pillar))
    pillar["kvmcluster"]["storage"]["secondary"] = {"enabled": True, "server": "kvm01"}
    # TCG nodes are slow and a bond has four interfaces: the default timeout, not the lab's.
    pillar["kvmcluster"]["network"]["rollback_timeout"] = 90
    # The share over a storage network apart from the guests': each node's third NIC (eth2)
    # on the lab's second bridge, configured by the node's own ifupdown as a site would.
    pillar["kvmcluster"].setdefault("networks", {})["storage"] = net.MIGRATION_SUBNET
    for node in ("kvm01", "kvm02"):
        # bond0 (802.3ad by default) of both NICs under br0. The lab switch carries 1500.
        entry = pillar["kvmcluster"]["nodes"][node]
        del entry["nic"]
        entry["bond"] = {"slaves": ["eth0", "eth1"], "mtu": 1500}
        entry["storage_ip"] = net.migration_ip_of(vms.ip[node])
        vms.ssh(node, "printf '\\nauto eth2\\niface eth2 inet static\\n    address %s/24\\n' "
                      f"{entry['storage_ip']} >> /etc/network/interfaces && ifup eth2")
    vms.pillar = pillar
    vms.reset_pillar()
    # Debian's reference policy denies firewalld's D-Bus replies to root's firewall-cmd
    # (firewalld_t -> unconfined_t send_msg): a Debian site under SELinux runs without it.
    vms.ssh("kvm02", "systemctl disable --now firewalld && systemctl mask firewalld")
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
import json, pwd, sys, libvirt
c = libvirt.open("qemu:///system")
p = c.storagePoolLookupByName("secondary")
action = sys.argv[1]
qemu = pwd.getpwnam("libvirt-qemu")
# As the formula makes volumes: owned by the QEMU account ("create"), or as virsh
# vol-create-as would, with no owner ("bare").
perms = ("<permissions><owner>%d</owner><group>%d</group><mode>0600</mode></permissions>"
         % (qemu.pw_uid, qemu.pw_gid)) if action == "create" else ""
error = None
if action in ("create", "bare"):
    try:
        p.createXML("<volume><name>%s</name><capacity unit='MiB'>8</capacity>"
                    "<target><format type='raw'/>%s</target></volume>" % (sys.argv[2], perms), 0)
    except libvirt.libvirtError as exc:
        error = exc.get_error_message()
p.refresh(0)
print(json.dumps({"active": p.isActive(), "autostart": p.autostart(), "error": error,
                  "volumes": sorted(p.listVolumes()),
                  "type": p.XMLDesc(0).split("type='", 1)[1].split("'")[0]}))
"""


STORAGE = {"kvm01": "172.30.20.41", "kvm02": "172.30.20.42"}  # nodes:<id>:storage_ip


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
    # firewalld as on a default EL host: running, default zone public, nothing opened
    # (on kvm01; kvm02 runs SELinux without it).
    assert vm_lab.ssh("kvm01", "firewall-cmd --state").strip() == "running"
    assert rich_rules(vm_lab, "kvm01") == []
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
           for c in STORAGE.values() for svc in ("mountd", "nfs", "rpc-bind")]
    mig = ('rule family="ipv4" source address="{}" port port="%d-%d" protocol="tcp" accept'
           % saltcfg.MIGRATION_PORTS)
    assert rich_rules(vm_lab, "kvm01") == sorted(nfs + [mig.format("172.30.10.42")])
    for node in ("kvm01",):
        assert rich_rules(vm_lab, node, permanent=True) == rich_rules(vm_lab, node)
        show(f"firewalld on {node} (VM node), zone public, runtime = permanent",
             "\n".join(rich_rules(vm_lab, node)))
    # Through the firewall: NFS connects over the storage network only; over the nodes'
    # (and guests') network firewalld rejects it, as it does a port nobody opened.
    assert tcp_probe(vm_lab, "kvm02", STORAGE["kvm01"], 2049) == "connected"
    assert tcp_probe(vm_lab, "kvm02", "172.30.10.41", 2049) == "No route to host"
    assert tcp_probe(vm_lab, "kvm02", "172.30.10.41", 16514) == "No route to host"
    exports = vm_lab.ssh("kvm01", "cat /etc/exports.d/kvmcluster.exports; exportfs -v")
    # Root-squashed: a client's root acts as the server's QEMU account, never as root.
    uid, gid = vm_lab.ssh("kvm01", "id -u libvirt-qemu; id -g libvirt-qemu").split()
    opts = f"rw,sync,no_subtree_check,root_squash,anonuid={uid},anongid={gid}"
    assert f'"/data01/secondary" 172.30.20.41({opts}) 172.30.20.42({opts})' in exports, exports
    assert vm_lab.ssh("kvm01", "stat -c '%u:%g %a' /data01/secondary").strip() == \
        f"{uid}:{gid} 750"
    assert "/data01/secondary\n\t\t172.30.20.42(" in exports or \
           "/data01/secondary\t172.30.20.42(" in exports
    assert "172.30.10." not in exports
    mnt = vm_lab.ssh("kvm02", "findmnt -n -o SOURCE,FSTYPE,OPTIONS /mnt/secondary; "
                              "grep /mnt/secondary /etc/fstab")
    assert mnt.startswith("172.30.20.41:/data01/secondary nfs4 ")
    assert all(o in mnt.split()[2].split(",") for o in ("hard", "timeo=600", "nosuid",
                                                        "nodev", "noexec")), mnt
    assert "172.30.20.41:/data01/secondary /mnt/secondary nfs vers=4.2,hard,timeo=600," \
           "retrans=2,_netdev,nosuid,nodev,noexec 0 0" in mnt
    # The client's NFS connection runs between the storage addresses.
    conns = vm_lab.ssh("kvm02", "ss -Htn state established '( dport = :2049 )'")
    assert f"{STORAGE['kvm02']}:" in conns and f"{STORAGE['kvm01']}:2049" in conns, conns
    show("the share over the storage network (kvm02): mount, fstab, NFS connection",
         mnt.strip() + "\n" + conns.strip())
    srv = vm_lab.ssh("kvm01", "findmnt -n -o SOURCE /mnt/secondary")
    assert srv.strip().endswith("[/secondary]")  # the server's bind mount of its export
    assert pool(vm_lab, "kvm01", "list")["type"] == "dir"
    client = pool(vm_lab, "kvm02", "create", "made-on-kvm02.img")
    assert client["type"] == "netfs" and client["active"] and client["autostart"]
    assert client["error"] is None and "made-on-kvm02.img" in client["volumes"]
    server = pool(vm_lab, "kvm01", "list")  # refreshed by the script
    assert "made-on-kvm02.img" in server["volumes"] and server["active"] and server["autostart"]
    assert vm_lab.ssh("kvm01", "stat -c '%u:%g %a' /data01/secondary/made-on-kvm02.img"
                      ).strip() == f"{uid}:{gid} 600"
    # Without an owner in its definition, libvirt cannot make a volume on the squashed share.
    bare = pool(vm_lab, "kvm02", "bare", "bare.img")
    assert bare["error"] and "bare.img" not in bare["volumes"], bare
    # Root on a client is the QEMU account there: what it makes is that account's, and a
    # file of the server's root stays closed to it.
    vm_lab.ssh("kvm01", "umask 077; echo secret > /data01/secondary/root-only")
    squash = vm_lab.ssh("kvm02", "touch /mnt/secondary/root-made; stat -c %u "
                                 "/mnt/secondary/root-made; cat /mnt/secondary/root-only 2>&1; "
                                 "rm -f /mnt/secondary/root-made; true")
    vm_lab.ssh("kvm01", "rm -f /data01/secondary/root-only")
    assert squash.splitlines()[0] == uid and "Permission denied" in squash, squash
    show("root squashed on the share (kvm02, a client)",
         f"export: {opts}\nexport directory: {uid}:{gid} 750\n"
         f"volume made through the netfs pool: {uid}:{gid} 600\n"
         f"a volume with no owner in its definition: {bare['error']}\n"
         f"root's own file, made on kvm02: uid {squash.splitlines()[0]}\n"
         f"a root-only file of the server, read by kvm02's root: {squash.splitlines()[1]}")
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


@pytest.fixture
def share_up(vm_lab):
    """The cluster converged with the share mounted on kvm02 (applied here when an earlier
    test has not)."""
    if not vm_lab.ssh("kvm02", "findmnt -n /mnt/secondary || true").strip():
        results, _ = vm_lab.apply()
        for node in ("kvm01", "kvm02"):
            assert summarize(results[node])["failed"] == 0, summarize(results[node])
    return vm_lab


GUEST_IP = "172.30.10.150"  # a guest's own address on the nodes' bridge (no node's)
# A guest on kvm02's br0 as far as the network can tell: a namespace behind a veth port of
# the bridge, with the kernel's own NFS client (a container guest would have none).
GUEST_UP = f"""set -e
ip netns add kvg
ip link add kvg-h type veth peer name kvg-g
ip link set kvg-h master br0 up
ip link set kvg-g netns kvg
ip -n kvg link set lo up
ip -n kvg addr add {GUEST_IP}/24 dev kvg-g
ip -n kvg link set kvg-g up
mkdir -p /run/kvg-mnt
"""
GUEST_DOWN = "ip netns del kvg 2>/dev/null; ip link del kvg-h 2>/dev/null; rmdir /run/kvg-mnt; true"


def guest_mount(vm_lab, server):
    """How the guest's NFS mount of the export ends: 'mounted' (and unmounted again) or
    the mount's own error, within 40 s."""
    cmd = (f"ip netns exec kvg sh -c 'timeout 40 mount -t nfs -o vers=4.2,soft,retry=0,"
           f"timeo=50,retrans=1 {server}:/data01/secondary /run/kvg-mnt 2>&1 && "
           "stat -f /run/kvg-mnt >/dev/null && umount /run/kvg-mnt && echo mounted'; true")
    return (vm_lab.ssh("kvm02", cmd, timeout=90).strip().splitlines() or ["(no output)"])[-1]


def test_a_guest_cannot_mount_the_share_and_a_planted_link_is_left_alone(share_up):
    lab = share_up
    lab.ssh("kvm02", GUEST_UP)
    try:
        # The guest reaches the server's node address, so what stops it is the formula's.
        ping = lab.ssh("kvm02", "ip netns exec kvg ping -c 2 -W 2 172.30.10.41 >/dev/null "
                                "&& echo reached || echo unreached").strip()
        assert ping == "reached"
        over_nodes = guest_mount(lab, "172.30.10.41")
        over_storage = guest_mount(lab, STORAGE["kvm01"])
        assert over_nodes != "mounted" and over_storage != "mounted"
        assert "Network is unreachable" in over_storage, over_storage
        # kvm02 itself mounts the share (over the storage network) all along.
        assert lab.ssh("kvm02", "findmnt -n -o SOURCE /mnt/secondary").strip() == \
            f"{STORAGE['kvm01']}:/data01/secondary"
        # The same guest with the guards undone by hand (export and firewall) mounts it:
        # the test can fail.
        lab.ssh("kvm01", f"exportfs -o rw,sync,no_subtree_check {GUEST_IP}:/data01/secondary"
                         " && firewall-cmd -q --add-rich-rule='rule family=\"ipv4\" source "
                         f"address=\"{GUEST_IP}\" service name=\"nfs\" accept'")
        try:
            undone = guest_mount(lab, "172.30.10.41")
        finally:
            lab.ssh("kvm01", f"exportfs -u {GUEST_IP}:/data01/secondary; firewall-cmd -q "
                             "--reload", check=False)
        assert undone == "mounted", undone
        show("a guest's NFS mount of the export (kvm02's bridge, " + GUEST_IP + ")",
             f"to the server's node address: {over_nodes}\n"
             f"to the server's storage address: {over_storage}\n"
             f"with the export and firewall opened to it by hand: {undone}")
    finally:
        lab.ssh("kvm02", GUEST_DOWN, check=False)
    # Links planted on the share where root once wrote (the probe's old names) point at a
    # root-only file on each node; status probes the share as root on every node.
    victim = "root:$6$secret:19000::::::"
    for node in ("kvm01", "kvm02"):
        lab.ssh(node, f"printf '%s\\n' '{victim}' > /root/victim && chmod 600 /root/victim")
    for name in (".kvmcluster-probe", ".kvmcluster-probe-kvm01", ".kvmcluster-probe-kvm02"):
        lab.ssh("kvm01", f"ln -sfn /root/victim /data01/secondary/{name}")
    try:
        proc = saltcfg.salt_run("kvmcluster.status", "ssh=True", "--out=json", timeout=600)
        data = json.loads(proc.stdout)
        for node in ("kvm01", "kvm02"):
            assert data["nodes"][node]["share"]["writable"] is True, data["nodes"][node]["share"]
            after = lab.ssh(node, "stat -c '%u:%g:%a' /root/victim; cat /root/victim").split()
            assert after == ["0:0:600", victim], (node, after)
        left = lab.ssh("kvm01", "find /data01/secondary -maxdepth 1 -name '.kvmcluster-probe*' "
                                "-printf '%y %f\\n' | sort").strip().split("\n")
        assert left == ["l .kvmcluster-probe", "l .kvmcluster-probe-kvm01",
                        "l .kvmcluster-probe-kvm02"], left
        show("links planted on the share, after salt-run kvmcluster.status",
             "\n".join(left) + "\n/root/victim on kvm01 and kvm02: 0:0:600, content unchanged")
    finally:
        lab.ssh("kvm01", "rm -f /data01/secondary/.kvmcluster-probe*", check=False)
        for node in ("kvm01", "kvm02"):
            lab.ssh(node, "rm -f /root/victim", check=False)


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
    taps = ["t-kvm01-0", "t-kvm01-1", "t-kvm01-s"]  # kvm01's bond and storage NIC
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
    assert "NFS server kvm01 (172.30.20.41) is unreachable" in mounted["comment"]
    assert mounted["duration"] / 1000 <= 60, mounted["duration"]
    # What does not need the share still ran and holds.
    for sid in ("kvmcluster-libvirt-service-running", "kvmcluster-storage-primary-pool-present"):
        assert res[next(k for k in res if f"_|-{sid}_|-" in k)]["result"] is True
    record_timing("NFS mount state failing on an unreachable server", mounted["duration"] / 1000)
    healed, _ = vm_lab.apply_on("kvm02")
    assert summarize(healed["kvm02"])["failed"] == 0


GUESTS_PY = r"""
import json, os, pwd, subprocess, time, libvirt
c = libvirt.open("qemu:///system")
qemu = pwd.getpwnam("libvirt-qemu")
perms = (f"<permissions><owner>{qemu.pw_uid}</owner><group>{qemu.pw_gid}</group>"
         "<mode>0600</mode></permissions>")  # as the formula makes volumes
out = {}
for pool_name in ("default", "secondary"):
    name = f"aa-{pool_name}"
    pool = c.storagePoolLookupByName(pool_name)
    vol = pool.createXML(f"<volume><name>{name}.qcow2</name><capacity unit='MiB'>16</capacity>"
                         f"<target><format type='qcow2'/>{perms}</target></volume>", 0)
    dom = c.defineXML(f'''<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
      <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{vol.path()}'/><target dev='vda' bus='virtio'/></disk>
      <console type='pty'/></devices></domain>''')
    try:
        dom.create()
    except libvirt.libvirtError as exc:
        out[pool_name] = {"error": exc.get_error_message()}
        dom.undefine(); vol.delete(0)
        continue
    time.sleep(3)
    pid = int(open(f"/run/libvirt/qemu/{name}.pid").read())
    label = open(f"/proc/{pid}/attr/current").read().strip()
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    try:
        file_label = os.getxattr(vol.path(), "security.selinux").decode().rstrip("\0")
    except OSError:
        file_label = None
    out[pool_name] = {"active": dom.isActive(), "path": vol.path(), "label": label,
                      "file_label": file_label,
                      "disk_open": vol.path() in fds,
                      "seclabel": dom.XMLDesc(0).split("<seclabel")[1].split(">")[0]}
    dom.destroy(); dom.undefine(); vol.delete(0)
print(json.dumps(out))
"""


def test_apparmor_guests_start_without_a_global_rule(vm_lab):
    """AppArmor active, no pool-wide rule (the default): libvirt's per-guest profile lets a
    guest open its own disk in the primary pool and in the secondary pool (on kvm01, the
    NFS server: its export, bind-mounted)."""
    node = "kvm01"
    assert vm_lab.ssh(node, "cat /sys/module/apparmor/parameters/enabled").strip() == "Y"
    abstraction = vm_lab.ssh(node, "cat /etc/apparmor.d/local/abstractions/libvirt-qemu "
                                   "2>/dev/null || true")
    assert "kvmcluster" not in abstraction and "rwk" not in abstraction
    got = json.loads(vm_lab.ssh(node, "python3 -", input=GUESTS_PY, timeout=300))
    for pool_name, g in got.items():
        assert g.get("active") == 1 and g["disk_open"], (pool_name, g)
        assert g["label"].startswith("libvirt-") and g["label"].endswith("(enforce)"), g
        assert "apparmor" in g["seclabel"], g
    show("AppArmor guests on kvm01 (no pool-wide rule)",
         "\n".join(f"{p}: active={g['active']} disk={g['path']} label={g['label']}"
                   for p, g in sorted(got.items())))
    assert got["secondary"]["path"].startswith("/mnt/secondary/")
    assert got["default"]["path"].startswith("/data01/primary/")


def denials(vm_lab, node):
    """SELinux denials since boot (the kernel's before auditd ran, the audit log's after),
    as {(source type, permission, target type, class): count}."""
    text = vm_lab.ssh(node, "dmesg; cat /var/log/audit/audit.log; true")
    out = {}
    for m in re.finditer(r"avc: +denied +\{ ([^}]+) \}.*?scontext=(\S+) tcontext=(\S+) "
                         r"tclass=(\S+)", text):
        key = (m.group(2).split(":")[2], m.group(1).strip(), m.group(3).split(":")[2],
               m.group(4))
        out[key] = out.get(key, 0) + 1
    return out


def test_selinux_enforcing_node_labels_and_what_debians_policy_denies(vm_lab):
    """SELinux enforcing with Debian's reference policy on kvm02 (an NFS client). The
    formula's part holds for real: the pool path carries virt_image_t by a local fcontext
    rule, virt_use_nfs is on, the NFS share is not relabelled (the NFS test's second apply
    changed nothing here). Then a guest is started from each pool: confined as svirt_t with
    its own categories and nothing denied to it, or, where Debian's policy denies libvirtd
    what it needs to start QEMU, the test says so (xfail) with the denials it saw."""
    node = "kvm02"
    assert vm_lab.ssh(node, "getenforce").strip() == "Enforcing"
    assert vm_lab.ssh(node, "cat /sys/module/apparmor/parameters/enabled 2>/dev/null; true"
                      ).strip() in ("", "N")
    labels = vm_lab.ssh(node, "ls -dZ /data01/primary; getsebool virt_use_nfs; "
                              "semanage fcontext -l -C | grep virt_image_t")
    lines = labels.splitlines()
    assert "virt_image_t" in lines[0], labels
    assert lines[1].strip() == "virt_use_nfs --> on", labels
    assert any(ln.startswith("/data01/primary(/.*)?") for ln in lines[2:]), labels
    assert any(ln.startswith("/mnt/secondary(/.*)?") for ln in lines[2:]), labels
    got = json.loads(vm_lab.ssh(node, "python3 -", input=GUESTS_PY, timeout=300))
    found = denials(vm_lab, node)
    show("SELinux on kvm02 (enforcing, Debian refpolicy): labels, guests, denials",
         labels + "\n" + "\n".join(f"{p}: {g}" for p, g in sorted(got.items()))
         + "\ndenials since boot (source, permission, target, class: count):\n"
         + "\n".join(f"  {k}: {v}" for k, v in sorted(found.items())))
    if any("error" in g for g in got.values()):
        libvirtd = sorted(k for k in found if k[0] == "virtd_t")
        assert libvirtd, (got, found)  # a start that failed for another reason fails here
        pytest.xfail("Debian's reference policy denies libvirtd what starting QEMU needs: "
                     + "; ".join(f"{k[1]} {k[2]} ({k[3]})" for k in libvirtd))
    for pool_name, g in got.items():
        assert g["active"] == 1 and g["disk_open"], (pool_name, g)
        assert g["label"].startswith("system_u:system_r:svirt_t:s0:c"), g
        assert "selinux" in g["seclabel"], g
    assert len({g["label"].rsplit(":", 1)[1] for g in got.values()}) == 2
    guests = {k: v for k, v in found.items() if "svirt" in k[0] or "qemu" in k[0]
              or k[2] in ("virt_image_t", "svirt_image_t", "nfs_t")}
    assert not guests, guests
