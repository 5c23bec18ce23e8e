"""Node drivers: prepare a node's root filesystem and give the argv that boots it.

Container nodes are systemd-nspawn machines over an overlay of the image; VM nodes are
qemu (TCG) machines with their own Debian kernel, booting a copy-on-write disk of it.
"""
import hashlib
import json
import os
import secrets
import shutil
import stat

from . import image, net, paths
from .run import run

DATA_SIZE = "4G"


def node_dir(node):
    return paths.HOME / "nodes" / node.name


def interfaces(node):
    return (
        "auto lo\niface lo inet loopback\n\n"
        "auto eth0\niface eth0 inet static\n"
        f"    address {node.ip}/{net.PREFIXLEN}\n    gateway {net.GATEWAY}\n"
        f"    up ip route add {net.ROUTE4[0]} via {net.ROUTE4[1]} dev eth0\n\n"
        "iface eth0 inet6 static\n"
        f"    address {net.ip6_of(node.ip)}/{net.PREFIXLEN6}\n    gateway {net.GATEWAY6}\n"
        f"    up ip -6 route add {net.ROUTE6[0]} via {net.ROUTE6[1]} dev eth0\n"
    )


# ---- containers ---------------------------------------------------------------------

def prepare_container(node):
    d = node_dir(node)
    for sub in ("upper", "work", "root", "data01"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    root = d / "root"
    if not os.path.ismount(root):
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={image.rootfs()},upperdir={d / 'upper'},workdir={d / 'work'}", root])
    ns = net.node_ns(node.name)
    net.plug(ns, node.name)
    net.nsexec(ns, "ip", "link", "set", "eth0", "address", node.macs[0])
    etc = root / "etc"
    (etc / "hostname").write_text(node.name + "\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{node.ip} {node.name}\n")
    mid = etc / "machine-id"
    if not mid.read_text().strip():
        # Unique before first boot: an empty one triggers first-boot presets.
        mid.write_text(secrets.token_hex(16) + "\n")
    (etc / "network/interfaces").write_text(interfaces(node))
    resolv = etc / "resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    resolv.write_text(f"nameserver {net.MGMT_IP}\n")
    kvm = d / "kvm"
    if not kvm.exists():
        # A private node for /dev/kvm: the node's tmpfiles chown it, the host's stays as is.
        st = os.stat("/dev/kvm")
        os.mknod(kvm, 0o600 | stat.S_IFCHR, st.st_rdev)
    if not list((etc / "ssh").glob("ssh_host_*_key")):
        run(["ssh-keygen", "-A", "-f", root])
    return root


def container_argv(node):
    rootfs = image.rootfs()
    d = node_dir(node)
    return [
        str(rootfs / "usr/bin/systemd-nspawn"), "--boot", f"--directory={d / 'root'}",
        f"--machine=lab-{node.name}", "--console=read-only", "--register=no", "--keep-unit",
        f"--network-namespace-path=/run/netns/{net.PREFIX}{node.name}",
        "--bind=/dev/net/tun", f"--bind={d / 'kvm'}:/dev/kvm", "--capability=all",
        "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        f"--bind={d / 'data01'}:/data01",
        f"--bind={paths.SHARED}:{paths.SHARED_MOUNT}",
    ]


def container_env():
    lib = image.rootfs() / "usr/lib/x86_64-linux-gnu/systemd"
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LD_LIBRARY_PATH": str(lib),
        "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
        "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
    }


# ---- VMs ----------------------------------------------------------------------------

def base_disk(selinux=False):
    """A raw ext4 image of the rootfs, made once per image (and per MAC system: the SELinux
    variant has Debian's refpolicy and its files labelled)."""
    parts = [image.lab_files_key(), image.VM_PREINSTALLED]
    if selinux:
        parts.append(image.SELINUX_PACKAGES)
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:8]
    kind = "vm-root-selinux" if selinux else "vm-root"
    disk = image.image_dir() / f"{kind}-{key}.img"
    if not disk.exists():
        for old in image.image_dir().glob(f"{kind}-*.img"):
            if old.name.startswith("vm-root-selinux") == selinux:
                old.unlink()
        tree = image.vm_tree(image.image_dir() / f"{kind}fs", selinux=selinux)
        tmp = disk.with_suffix(".tmp")
        try:
            run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, tmp, "8G"])
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        tmp.rename(disk)
    return disk


def prepare_vm(node):
    d = node_dir(node)
    d.mkdir(parents=True, exist_ok=True)
    disk = d / "root.qcow2"
    if not disk.exists():
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             base_disk(node.selinux), disk])
    data = d / "data01.img"
    if not data.exists():
        run(["truncate", "-s", DATA_SIZE, data])
        run(["mkfs.ext4", "-q", "-F", "-L", "data01", data])
    (d / "machine-id").exists() or (d / "machine-id").write_text(secrets.token_hex(16))
    taps = [net.tap(f"{node.name}-{i}") for i in range(len(node.macs))]
    taps.append(net.tap(f"{node.name}-s", bridge=net.MIGRATION_BRIDGE))
    return taps


def side_mac(node):
    """The MAC of a VM node's NIC on the second network (eth2)."""
    return node.macs[0][:-2] + "10"


def vm_argv(node):
    d = node_dir(node)
    boot = image.rootfs() / "boot"
    cmdline = " ".join([
        "root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "quiet",
        f"lab.hostname={node.name}", f"lab.ip={node.ip}/{net.PREFIXLEN}", f"lab.gw={net.GATEWAY}",
        f"lab.dns={net.MGMT_IP}", f"lab.machine_id={(d / 'machine-id').read_text().strip()}",
        # Debian's kernel has SELinux built in; AppArmor is its default.
        *(["security=selinux", "selinux=1", "enforcing=1"] if node.selinux else []),
    ])
    argv = [
        "ip", "netns", "exec", net.SWITCH,
        "qemu-system-x86_64", "-name", node.name, "-machine", "q35,accel=tcg", "-cpu", "max",
        "-smp", "2", "-m", "2048", "-display", "none", "-monitor", "none",
        "-serial", f"file:{d / 'console.log'}",
        "-kernel", str(boot / "vmlinuz"), "-initrd", str(boot / "initrd.img"), "-append", cmdline,
        "-drive", f"file={d / 'root.qcow2'},if=virtio,format=qcow2",
        "-drive", f"file={d / 'data01.img'},if=virtio,format=raw",
    ]
    for i, mac in enumerate(node.macs):
        argv += ["-netdev", f"tap,id=n{i},ifname=t-{node.name}-{i},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
    # The last NIC (eth2): on the lab's second network, for a storage or migration network.
    argv += ["-netdev", f"tap,id=side,ifname=t-{node.name}-s,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=side,mac={side_mac(node)}"]
    return argv


def prepare(node, migration_net=False):
    if node.kind != "container":
        return prepare_vm(node)
    root = prepare_container(node)
    if migration_net:
        # A NIC (it outlives the node's reboots, as a real one does), configured by the
        # node's own ifupdown at every boot.
        net.plug_migration(net.node_ns(node.name), node.name)
        with open(root / "etc/network/interfaces", "a", encoding="utf-8") as fh:
            fh.write(f"\nauto eth1\niface eth1 inet static\n"
                     f"    address {net.migration_ip_of(node.ip)}/24\n")
    return root


def argv_env(node):
    if node.kind == "container":
        return container_argv(node), container_env()
    return vm_argv(node), {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def remove(node):
    shutil.rmtree(node_dir(node), ignore_errors=True)
