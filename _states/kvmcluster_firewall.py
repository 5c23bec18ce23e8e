"""
State for firewalld on a kvmcluster node: the rich rules its roles need (see
``kvmcluster_firewall.wanted``), in the zone of the interface that carries the node's
address, at runtime and permanently. Rules the formula added and the model no longer wants
are removed; rules the site added are never touched. Nothing happens where firewalld does
not run (the preflight warns where another firewall does).
"""

__virtualname__ = "kvmcluster_firewall"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _address_interface(ip):
    """The interface that holds ``ip`` now (br0 after the takeover, the NIC before)."""
    for iface, data in (__salt__["network.interfaces"]() or {}).items():
        for fam in ("inet", "inet6"):
            if any(a.get("address") == ip for a in data.get(fam, [])):
                return iface
    return None


def managed(name):
    """
    firewalld lets in, from the nodes that need them, the services of this node's roles:
    NFS (nfs, rpc-bind, mountd) for the export's clients on the NFS server, libvirt TLS when
    TLS is on and the migration ports when migration is on, for the other nodes.

    name
        Any; reported back.
    """
    ret = _skeleton().ret
    view = __salt__["kvmcluster_model.current"]()
    if not view["firewall"]["manage"]:
        return ret(name, comment="the firewall is not managed here (kvmcluster:firewall:manage)")
    if not __salt__["kvmcluster_firewall.running"]():
        return ret(name, comment="firewalld does not run on this node; nothing to do")
    me = view["self"]
    iface = _address_interface(me["ip"]) or me["bridge"]["name"]
    zone = __salt__["kvmcluster_firewall.zone_of"](iface)
    want = __salt__["kvmcluster_firewall.wanted"](view)
    owned = __salt__["kvmcluster_firewall.owned"]()
    mine = set(want) | set(owned.get(zone, []))

    def ours(permanent):
        return sorted(r for r in __salt__["kvmcluster_firewall.rich_rules"](zone, permanent)
                      if r in mine)

    def diff():
        changes = {}
        for scope, permanent in (("runtime", False), ("permanent", True)):
            have = ours(permanent)
            if have != sorted(want):
                changes[f"{zone}:{scope}"] = {"old": have, "new": sorted(want)}
        return changes

    def apply(_changes):
        stale = sorted(mine - set(want))
        # Recorded first: a rule added and then interrupted is still known to be ours.
        __salt__["kvmcluster_firewall.set_owned"]({**owned, zone: sorted(mine)})
        __salt__["kvmcluster_firewall.change"](zone, add=want, remove=stale)
        __salt__["kvmcluster_firewall.set_owned"]({**owned, zone: sorted(want)})

    return _skeleton().converge(
        name, __opts__["test"], diff, apply, diff,
        ok=f"firewalld zone {zone} ({iface}): {len(want)} kvmcluster rule(s) in place",
        planned=f"firewalld zone {zone} ({iface}) would get the kvmcluster rules",
        done=f"firewalld zone {zone} ({iface}): kvmcluster rules set (runtime and permanent)")
