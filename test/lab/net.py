"""The lab network: a switch namespace holding the lab bridge, a controller namespace,
and one namespace per container node. No namespace gets a route off the lab subnet."""
from pathlib import Path

from .run import run

PREFIX = "kvl-"
SWITCH = PREFIX + "sw"
CONTROLLER = PREFIX + "ctl"
BRIDGE = "labbr"
SUBNET = "172.30.10.0/24"
PREFIXLEN = 24
GATEWAY = "172.30.10.1"
MGMT_IP = "172.30.10.11"  # the management node: runs salt-ssh, serves the package repo
# IPv6 inside the lab only (ULA): the gateway and management addresses, nodes ::<host>.
SUBNET6 = "fd00:30:10::/64"
PREFIXLEN6 = 64
GATEWAY6 = "fd00:30:10::1"
MGMT_IP6 = "fd00:30:10::11"


# A second network apart from the guests' (the site's migration or storage network): a
# bridge of its own on the switch, a second NIC (eth1) on the container nodes that ask for
# it, a third (eth2, unconfigured until a test says so) on every VM node.
MIGRATION_BRIDGE = "labmig"
MIGRATION_SUBNET = "172.30.20.0/24"


def migration_ip_of(ip4):
    """The node's address on the lab's second network: its host number there."""
    return f"172.30.20.{ip4.rsplit('.', 1)[1]}"


# A static route per family on each node's NIC before the takeover (to nowhere real: the
# lab gateway has no route off the lab), to see it move to the bridge and back.
ROUTE4 = ("10.99.0.0/24", GATEWAY)
ROUTE6 = ("fd00:99::/64", GATEWAY6)


def ip6_of(ip4):
    """The lab node's IPv6 address: its IPv4 host number in the lab's ULA prefix."""
    return f"fd00:30:10::{ip4.rsplit('.', 1)[1]}"


def netns_list():
    root = Path("/run/netns")
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def ours():
    return [n for n in netns_list() if n.startswith(PREFIX)]


def nsexec(ns, *argv, **kw):
    return run(["ip", "netns", "exec", ns, *argv], **kw)


def _add_ns(name):
    if name not in netns_list():
        run(["ip", "netns", "add", name])
    nsexec(name, "ip", "link", "set", "lo", "up")


def create_switch():
    """The switch namespace and its bridge; the controller plugged in with its addresses."""
    _add_ns(SWITCH)
    nsexec(SWITCH, "ip", "link", "add", BRIDGE, "type", "bridge", check=False)
    nsexec(SWITCH, "ip", "link", "set", BRIDGE, "up")
    nsexec(SWITCH, "ip", "link", "add", MIGRATION_BRIDGE, "type", "bridge", check=False)
    nsexec(SWITCH, "ip", "link", "set", MIGRATION_BRIDGE, "up")
    _add_ns(CONTROLLER)
    plug(CONTROLLER, "ctl")
    for addr in (GATEWAY, MGMT_IP):
        nsexec(CONTROLLER, "ip", "addr", "replace", f"{addr}/{PREFIXLEN}", "dev", "eth0")
    for addr in (GATEWAY6, MGMT_IP6):
        nsexec(CONTROLLER, "ip", "-6", "addr", "replace", f"{addr}/{PREFIXLEN6}", "dev", "eth0",
               "nodad")
    nsexec(CONTROLLER, "ip", "link", "set", "eth0", "up")


def plug(ns, tag, ifname="eth0", bridge=BRIDGE, prefix="v-"):
    """A veth from namespace ns (as ifname) to a bridge of the switch (as <prefix><tag>)."""
    port = f"{prefix}{tag}"[:15]
    nsexec(SWITCH, "ip", "link", "del", port, check=False, capture=True)
    nsexec(SWITCH, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname,
           "netns", ns)
    nsexec(SWITCH, "ip", "link", "set", port, "master", bridge, "up")


def plug_migration(ns, tag):
    """The node's second NIC on the migration network (its address comes from the node's
    own network configuration, as at a site: see nodes.interfaces)."""
    plug(ns, tag, "eth1", MIGRATION_BRIDGE, "m-")


def tap(tag, bridge=BRIDGE):
    """A tap on a bridge of the switch (the lab bridge by default), for a qemu running in
    the switch namespace."""
    name = f"t-{tag}"[:15]
    nsexec(SWITCH, "ip", "link", "del", name, check=False, capture=True)
    nsexec(SWITCH, "ip", "tuntap", "add", "dev", name, "mode", "tap")
    nsexec(SWITCH, "ip", "link", "set", name, "master", bridge, "up")
    return name


def node_ns(name):
    ns = PREFIX + name
    _add_ns(ns)
    return ns


def reset_links(ns, keep=("lo", "eth0", "eth1")):
    """What a reboot does to a node's links: virtual ones gone, the NIC bare and down.
    (A container node's namespace outlives its boots; a real host's kernel does not.)"""
    import json  # pylint: disable=import-outside-toplevel

    links = json.loads(nsexec(ns, "ip", "-j", "link", "show", capture=True).stdout or "[]")
    for ln in links:
        if ln["ifname"] not in keep:
            nsexec(ns, "ip", "link", "del", ln["ifname"], check=False, capture=True)
    for name in keep[1:]:
        nsexec(ns, "ip", "link", "set", name, "nomaster", check=False, capture=True)
        nsexec(ns, "ip", "addr", "flush", "dev", name, check=False, capture=True)
        nsexec(ns, "ip", "link", "set", name, "down", check=False, capture=True)


def destroy():
    for ns in ours():
        run(["ip", "netns", "del", ns], check=False)
