"""Which nodes a lab has: names, kinds, addresses and MACs."""
from dataclasses import asdict, dataclass, field

from . import net

FIRST_HOST = 41  # the seed's first node is 172.30.10.41
FIRST_MGMT = 12  # the seed's second DNS address (the controller is .11)


@dataclass
class Node:
    name: str
    kind: str  # "container" or "vm"
    ip: str
    macs: list = field(default_factory=list)
    backend: str = "ifupdown"  # what configures eth0 when the node boots
    roles: list = field(default_factory=list)  # pillar roles (management nodes)
    selinux: bool = False  # a VM node booted with SELinux enforcing (Debian's refpolicy)

    def to_dict(self):
        return asdict(self)


def _mac(index, nic):
    return f"52:54:00:30:{index:02x}:{nic:02x}"


def make(containers=3, vms=0, backends=(), management=0, selinux=()):
    nodes = []
    base = net.SUBNET.rsplit(".", 1)[0]
    for i in range(management):
        # Management nodes: containers with one NIC, named mgmt01.., at .12 on.
        nodes.append(Node(name=f"mgmt{i + 1:02d}", kind="container",
                          ip=f"{base}.{FIRST_MGMT + i}", macs=[_mac(0x80 + i, 0)],
                          roles=["management"]))
    for i in range(containers + vms):
        kind = "container" if i < containers else "vm"
        nics = 1 if kind == "container" else 2
        base = net.SUBNET.rsplit(".", 1)[0]
        name = f"kvm{i + 1:02d}"
        nodes.append(Node(name=name, kind=kind, ip=f"{base}.{FIRST_HOST + i}",
                          macs=[_mac(i + 1, n) for n in range(nics)],
                          backend=backends[i] if i < len(backends) else "ifupdown",
                          selinux=kind == "vm" and name in selinux))
    return nodes


def from_dicts(rows):
    return [Node(**r) for r in rows]
