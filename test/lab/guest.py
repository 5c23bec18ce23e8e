"""A tiny guest for the lab: the node image's Debian kernel plus a busybox initrd that
prints a marker on its serial console and powers off. Boots in seconds under TCG."""
import subprocess
import tempfile
from pathlib import Path

from . import image

MARKER = "KVMCLUSTER-GUEST-UP"
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "{MARKER} kernel=$(/bin/busybox uname -r) cpus=$(/bin/busybox nproc)"
/bin/busybox poweroff -f
"""


def _newc(entries):
    """A cpio archive in the kernel's initramfs (newc) format."""
    out = bytearray()

    def pad(n):
        return b"\0" * ((4 - n % 4) % 4)

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        head = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        out += head + name.encode() + b"\0"
        out += pad(len(head) + len(name) + 1)
        out += data + pad(len(data))
    return bytes(out)


def _busybox():
    deb = next(image.repo_dir().glob("busybox-static_*.deb"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        return (Path(tmp) / "bin/busybox").read_bytes()


def initrd():
    d, f = 0o040755, 0o100755
    return _newc([
        ("bin", d, b"", (0, 0)), ("dev", d, b"", (0, 0)), ("proc", d, b"", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("bin/busybox", f, _busybox(), (0, 0)), ("init", f, INIT.encode(), (0, 0)),
    ])


# A guest that asks for its address by DHCP on its virtio NIC and prints the lease.
LEASE_MARKER = "KVMCLUSTER-LEASE"
VIRTIO_NET = ["virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
              "virtio_pci", "failover", "net_failover", "virtio_net"]
DHCP_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in {' '.join(VIRTIO_NET)}; do insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -q -n -t 20 -T 2 -O hostname -O domain -s /bin/lease || echo "{LEASE_MARKER} none"
echo "{MARKER} dhcp done"
poweroff -f
"""
LEASE_SCRIPT = f"""#!/bin/sh
case "$1" in
  bound|renew) echo "{LEASE_MARKER} ip=$ip mask=$subnet router=$router dns=$dns name=$hostname domain=$domain serverid=$serverid" ;;
esac
"""


def dhcp_initrd():
    """A busybox initrd with the kernel's virtio-net modules (from the node image's kernel)
    whose init leases an address by DHCP and prints it on the console."""
    mods = next((image.rootfs() / "lib/modules").iterdir())
    paths = {m: next(mods.rglob(f"{m}.ko")) for m in VIRTIO_NET}
    d, f = 0o040755, 0o100755
    entries = [("bin", d, b"", (0, 0)), ("dev", d, b"", (0, 0)), ("proc", d, b"", (0, 0)),
               ("sys", d, b"", (0, 0)), ("lib", d, b"", (0, 0)), ("lib/modules", d, b"", (0, 0)),
               ("dev/console", 0o020600, b"", (5, 1)),
               ("bin/busybox", f, _busybox(), (0, 0)), ("init", f, DHCP_INIT.encode(), (0, 0)),
               ("bin/lease", f, LEASE_SCRIPT.encode(), (0, 0))]
    entries += [(f"lib/modules/{m}.ko", 0o100644, p.read_bytes(), (0, 0))
                for m, p in paths.items()]
    return _newc(entries)


def _xml(name, kernel, initrd_path, console_log, device):
    """A direct-kernel TCG guest with one extra device and its serial console in a file."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd_path}</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
{device}
    <serial type='file'>
      <source path='{console_log}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""


def dhcp_domain_xml(name, mac, bridge, kernel, initrd_path, console_log):
    return _xml(name, kernel, initrd_path, console_log, f"""    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{bridge}'/>
      <model type='virtio'/>
    </interface>""")


def domain_xml(name, pool, volume, kernel, initrd_path, console_log):
    return _xml(name, kernel, initrd_path, console_log, f"""    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='{pool}' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>""")


# Run on a node (python3 -, spec as JSON on stdin): optionally a volume, then define and
# start the guest, wait (bounded) for the marker on its console, optionally remove it.
BOOT_PY = r"""
import json, sys, time, libvirt
spec = json.load(sys.stdin)
c = libvirt.open("qemu:///system")
out = {}
if spec.get("volume"):
    pool = c.storagePoolLookupByName(spec["volume"]["pool"])
    vol = pool.createXML("<volume><name>%s</name><capacity unit='MiB'>16</capacity>"
                         "<target><format type='raw'/></target></volume>"
                         % spec["volume"]["name"], 0)
    out["disk"] = vol.path()
dom = c.defineXML(spec["xml"])
out["type"] = dom.XMLDesc(0).split("type='", 1)[1].split("'")[0]
t0 = time.monotonic()
dom.create()
log = ""
while time.monotonic() - t0 < spec.get("timeout", 180):
    try:
        log = open(spec["console"]).read()
    except OSError:
        pass
    if spec["marker"] in log:
        break
    time.sleep(0.5)
out["seconds"] = round(time.monotonic() - t0, 1)
if spec.get("remove"):
    if dom.isActive():
        dom.destroy()
    dom.undefine()
out["console"] = log[-1500:]
print(json.dumps(out))
"""


# ---- the lab's golden image: a disk, a kernel and an initrd on the shared storage ---------

GOLDEN_HEADER = "KVMCLUSTER-GOLDEN tiny"
DISK_MARKER = "KVMCLUSTER-DISK"
ACPI_MARKER = "KVMCLUSTER-ACPI"
READY_MARKER = "KVMCLUSTER-VM-READY"
TICK_MARKER = "KVMCLUSTER-TICK"
SPOOF_MARKER = "KVMCLUSTER-SPOOF"
HOSTILE_MARKER = "KVMCLUSTER-HOSTILE"
# A string only the guest's memory holds (its init, 20,000 copies in a file of its
# RAM-backed root): a live migration's stream carries it, in clear unless encrypted.
MEMORY_MARKER = "KVMCLUSTER-GUEST-MEMORY-5f0c9e2b7d41a386"
VM_MODULES = VIRTIO_NET + ["virtio_blk", "virtio_balloon", "button", "evdev"]
# The init of a VM made from the golden image: it reads its own disk, leases its address
# (and host name) by DHCP, configures it, powers off on the ACPI power button unless its
# kernel command line says kvmcluster.acpi=0, and stays up.
VM_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(VM_MODULES)}; do insmod /lib/modules/$m.ko 2>/dev/null; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done
echo "{DISK_MARKER} $(dd if=/dev/vda bs=64 count=1 2>/dev/null | head -n 1)"
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -q -n -t 20 -T 2 -O hostname -O domain -s /bin/vmlease || echo "{LEASE_MARKER} none"
if grep -q kvmcluster.acpi=0 /proc/cmdline; then
  echo "{ACPI_MARKER} ignored"
else
  # The ACPI power button is an input device: its first event powers the guest off.
  for e in /sys/class/input/event*; do
    grep -q "Power Button" $e/device/name 2>/dev/null || continue
    (dd if=/dev/input/${{e##*/}} bs=24 count=1 >/dev/null 2>&1; /etc/acpi/PWRF/00000080) &
    echo "{ACPI_MARKER} honoured (${{e##*/}})"
  done
fi
# Many pages of it (its RAM-backed root), so that a capture that misses a few segments
# still sees it if the stream is in clear.
yes "{MEMORY_MARKER}" | head -n 20000 > /memory-marker
echo "{READY_MARKER}"
# A hostile guest (kvmcluster.spoof=<addr> kvmcluster.peer=<addr> on its command line):
# it also takes an address that is not its own and, at every tick, pings the peer from
# that address and from its own, printing which got an answer.
spoof=; peer=
for w in $(cat /proc/cmdline); do
  case "$w" in kvmcluster.spoof=*) spoof=${{w#*=}};; kvmcluster.peer=*) peer=${{w#*=}};; esac
done
[ -n "$spoof" ] && ip addr add "$spoof/32" dev eth0
# A guest that takes a node's place (kvmcluster.hostile=<node ip>,<node mac>,<peer>): the
# node's MAC on its NIC, the node's address beside its own, and the peer reached from that
# address; it announces the address (gratuitous ARP) and serves DHCP. At every tick it
# prints whether the peer answered a ping and an SSH connection from the node's address.
hostile=
for w in $(cat /proc/cmdline); do
  case "$w" in kvmcluster.hostile=*) hostile=$(echo "${{w#*=}}" | tr , ' ');; esac
done
if [ -n "$hostile" ]; then
  set -- $hostile
  h_ip=$1; h_mac=$2; h_peer=$3
  ip link set eth0 address "$h_mac" 2>/dev/null || {{
    ip link set eth0 down; ip link set eth0 address "$h_mac"; ip link set eth0 up; }}
  ip addr add "$h_ip/32" dev eth0
  ip route replace "$h_peer/32" dev eth0 src "$h_ip"
  mkdir -p /var/lib/misc /etc; touch /var/lib/misc/udhcpd.leases
  printf 'start 10.99.0.10\\nend 10.99.0.20\\ninterface eth0\\nopt router 10.99.0.1\\n' \
    > /etc/udhcpd.conf
  udhcpd -S /etc/udhcpd.conf
fi
# A counter that only goes on while this boot of the guest runs: a live migration keeps it
# counting (on the new node's console), a restart would begin again at 1.
i=0
while :; do
  i=$((i + 1)); echo "{TICK_MARKER} $i"
  if [ -n "$spoof" ]; then
    ping -c 1 -W 1 -I "$spoof" "$peer" >/dev/null 2>&1 && r=reached || r=blocked
    ping -c 1 -W 1 "$peer" >/dev/null 2>&1 && o=reached || o=blocked
    echo "{SPOOF_MARKER} $i spoofed=$r own=$o"
  fi
  if [ -n "$hostile" ]; then
    arping -U -c 1 -I eth0 -s "$h_ip" "$h_ip" >/dev/null 2>&1
    ping -c 1 -W 1 "$h_peer" >/dev/null 2>&1 && r=reached || r=blocked
    echo | nc -w 1 "$h_peer" 22 >/dev/null 2>&1 && t=reached || t=blocked
    echo "{HOSTILE_MARKER} $i ping=$r ssh=$t"
  fi
  sleep 2
done
"""
VM_LEASE_SCRIPT = f"""#!/bin/sh
case "$1" in
  bound|renew)
    eval $(ipcalc -p "$ip" "$subnet")
    ip addr add "$ip/$PREFIX" dev eth0
    [ -n "$router" ] && ip route add default via "$router"
    echo "{LEASE_MARKER} ip=$ip mask=$subnet router=$router dns=$dns name=$hostname domain=$domain serverid=$serverid" ;;
esac
"""
POWER_BUTTON = "#!/bin/sh\necho 'KVMCLUSTER-POWER-BUTTON'\npoweroff -f\n"


def vm_initrd():
    """The golden image's initrd (busybox, the node kernel's virtio/button/evdev modules)."""
    mods = next((image.rootfs() / "lib/modules").iterdir())
    paths = {m: next(mods.rglob(f"{m}.ko")) for m in VM_MODULES}
    d, f = 0o040755, 0o100755
    entries = [(p, d, b"", (0, 0)) for p in ("bin", "dev", "proc", "sys", "etc", "etc/acpi",
                                             "etc/acpi/PWRF", "lib", "lib/modules")]
    entries += [("dev/console", 0o020600, b"", (5, 1)),
                ("bin/busybox", f, _busybox(), (0, 0)), ("init", f, VM_INIT.encode(), (0, 0)),
                ("bin/vmlease", f, VM_LEASE_SCRIPT.encode(), (0, 0)),
                ("etc/acpi/PWRF/00000080", f, POWER_BUTTON.encode(), (0, 0))]
    entries += [(f"lib/modules/{m}.ko", 0o100644, p.read_bytes(), (0, 0))
                for m, p in paths.items()]
    return _newc(entries)


def install_golden(shared):
    """The golden image on the shared storage: ``tiny.raw`` (1 GiB, sparse, a header the
    guest prints), ``boot/vmlinuz`` and ``boot/tiny-initrd``. Returns their paths (host)."""
    shared = Path(shared)
    (shared / "boot").mkdir(mode=0o755, exist_ok=True)
    disk = shared / "tiny.raw"
    with open(disk, "wb") as fh:
        fh.write(f"{GOLDEN_HEADER}\n".encode().ljust(512, b"\0"))
        fh.truncate(1 << 30)
    kernel = next((image.rootfs() / "boot").glob("vmlinuz-*"))
    (shared / "boot/vmlinuz").write_bytes(kernel.read_bytes())
    (shared / "boot/tiny-initrd").write_bytes(vm_initrd())
    for p in (disk, shared / "boot/vmlinuz", shared / "boot/tiny-initrd"):
        p.chmod(0o644)
    return {"disk": disk, "kernel": shared / "boot/vmlinuz",
            "initrd": shared / "boot/tiny-initrd"}
