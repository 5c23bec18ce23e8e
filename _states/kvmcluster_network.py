"""
The bridge takeover: the node's IP moves onto the bridge (over a NIC or a bond), written for
the node's network backend, applied as one transaction that rolls itself back unless it is
confirmed: by the node itself when the management session's address stays and its peer
answers over the new path, otherwise by the management node (``kvmcluster_network.confirm``)
within the rollback timeout.

Under ``test=True`` the state reports the exact file diffs, what moves at runtime and the
risk class, and changes nothing.
"""
import time

__virtualname__ = "kvmcluster_network"
READDRESS_DELAY = 5  # seconds between the report and a re-addressing apply


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def _effect_lines(ev):
    eff = ev["effect"]
    out = []
    for m in eff.get("addresses", []):
        out.append(f"address {m['address']}: {m['from'] or 'nowhere'} -> {m['to'] or 'removed'}")
    if "default_route" in eff:
        out.append(f"default route: {', '.join(eff['default_route']['old']) or 'none'} -> "
                   f"{', '.join(eff['default_route']['new'])}")
    if "bridge_mac" in eff:
        out.append(f"{ev['plan']['bridge']['name']} MAC: {eff['bridge_mac']['old'] or 'new'} -> "
                   f"{eff['bridge_mac']['new']}")
    for r in eff.get("routes", []):
        out.append(f"route {r}")
    if "default_route6" in eff:
        out.append(f"IPv6 default route: {', '.join(eff['default_route6']['old']) or 'none'} "
                   f"-> {', '.join(eff['default_route6']['new'])}")
    sess = eff.get("management_session")
    if sess:
        out.append(f"management session on {sess['address']} ({sess['interface']}): "
                   + ("touched, " if sess["touched"] else "not touched, ")
                   + ("address kept" if sess["kept"] else "ADDRESS GOES AWAY"))
    return out


def bridged(name, packages=None, backend=None):
    """
    Make the node's bridge carry its address as the cluster model says.

    name
        The bridge (for the record; the model names it).
    packages
        Backend packages by backend (``<backend>_bond`` for bond extras), from map.jinja.
    backend
        Override the model's backend (``auto`` detects it on the node).
    """
    ret = _ret(name)
    view = __salt__["kvmcluster_model.current"]()
    me = view["self"]
    packages = packages or {}
    settings = view["network"]
    if not settings.get("manage", True):
        ret["comment"] = "the bridge is not managed here (kvmcluster:network:manage is false)"
        return ret
    if not me.get("takeover", True):
        ret["comment"] = (f"{me['name']} is a management node and names no bridge: its "
                          "network is left as it is")
        return ret
    rollback_after = settings["rollback_timeout"]
    # Under test=True nothing is rolled back, not even a stale transaction.
    pending = __salt__["kvmcluster_nettxn.pending"](reap=not __opts__["test"])
    if pending:
        ret["result"] = False
        left = max(0, int((pending.get("deadline") or 0) - time.time()))
        ret["comment"] = (f"network transaction {pending['id']} is {pending['phase']} and not "
                          f"confirmed (rollback in about {left}s); confirm it with "
                          f"kvmcluster_network.confirm or wait for the rollback")
        return ret
    backend = backend or me["backend"]
    try:
        if backend in (None, "auto"):
            backend = __salt__["kvmcluster_network.detect_backend"]()
        plan = __salt__["kvmcluster_network.plan"](me)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = str(exc)
        return ret
    want = list(packages.get(backend, []))
    if plan["port"]["kind"] == "bond":
        want += packages.get(f"{backend}_bond", [])
    changes = {}
    try:
        # The same entries both ways: the packages asked for (dependencies are the tool's).
        pkgs = _skeleton().packages_diff(__salt__, want, __opts__["test"])
        if pkgs:
            changes["packages"] = pkgs
            if not __opts__["test"]:
                _skeleton().packages_install(__salt__, pkgs)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = f"packages for backend {backend}: {exc}"
        return ret
    try:
        ev = __salt__["kvmcluster_network.evaluate"](me, backend, rollback_after, settings)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = str(exc)
        ret["changes"] = changes if not __opts__["test"] else {}
        return ret
    br = plan["bridge"]["name"]
    if ev["risk"] != "no-op":
        changes.update({"backend": backend, "risk": ev["risk"], "files": ev["files"],
                        "runtime": ev["effect"]})
        if ev["runtime_missing"]:
            changes["runtime"] = dict(ev["effect"], missing=ev["runtime_missing"])
    if not changes:
        ret["comment"] = (f"{br} holds {plan['address']} over {plan['port']['name']} "
                          f"({backend}); nothing to change")
        return ret
    lines = _effect_lines(ev)
    if ev["risk"] == "disruptive" and ev["guests"]:
        ret["result"] = False
        ret["comment"] = (f"refusing a disruptive change of {br}: guests are attached to it "
                          f"({', '.join(ev['guests'])}); migrate or stop them first")
        return ret
    who = ev["effect"]["confirmation"]
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = changes
        ret["comment"] = ("packages for the " + backend + " backend would be installed"
                          if ev["risk"] == "no-op" else
                          f"would take over {br} with backend {backend} ({ev['risk']}); "
                          f"confirmation by the {who['by']} ({who['why']}):\n" + "\n".join(lines))
        return ret
    if ev["risk"] == "no-op":
        ret["changes"] = changes
        ret["comment"] = f"{br}: packages installed; configuration already as planned"
        return ret
    t0 = time.monotonic()
    moves_session = not ev["effect"].get("management_session", {}).get("kept", True)
    try:
        if moves_session:
            # Re-addressing cuts this very session: report first, apply a few seconds later.
            res = __salt__["kvmcluster_nettxn.begin"](ev["spec"], wait=False,
                                                      delay=READDRESS_DELAY)
        else:
            res = __salt__["kvmcluster_nettxn.begin"](ev["spec"])
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["changes"] = {k: v for k, v in changes.items() if k == "packages"}
        ret["comment"] = f"network transaction not started: {exc}"
        return ret
    took = time.monotonic() - t0
    if moves_session and res["phase"] == "armed":
        ret["changes"] = changes
        ret["comment"] = (f"re-addressing: {br} takes over {plan['address']} in "
                          f"{READDRESS_DELAY}s (transaction {res['id']}, {backend}); this "
                          f"session ends then. Confirm from the management node at the new "
                          f"address within {rollback_after}s of the node's local check "
                          f"(salt-run kvmcluster.confirm, or the orchestration "
                          f"kvmcluster.orch.network) or the node goes back to "
                          f"{ev['effect']['management_session']['address']}.\n"
                          + "\n".join(lines))
        return ret
    if res["phase"] not in ("applied", "confirmed"):
        # What is on the node now: the old configuration; only installed packages remain.
        ret["result"] = False
        ret["changes"] = {k: v for k, v in changes.items() if k == "packages"}
        ret["comment"] = (f"network transaction {res['id']} {res['phase']} after {took:.1f}s: "
                          f"{res['detail']}; the previous configuration is back, nothing of "
                          "it stays changed")
        return ret
    ret["changes"] = changes
    verb = "took over" if ev["risk"] == "disruptive" else "reloaded without going down"
    if res["phase"] == "confirmed":
        ret["comment"] = (f"{br} {verb} in {took:.1f}s ({backend}, transaction {res['id']}), "
                          f"{res['detail']}\n" + "\n".join(lines))
        return ret
    if who["by"] == "node":
        # The node could not prove the path itself: the management node has to confirm.
        changes["runtime"]["confirmation"] = {"by": "management", "why": res["detail"]}
    at = time.strftime("%H:%M:%S", time.localtime(res.get("deadline") or time.time()))
    ret["comment"] = (f"{br} took over in {took:.1f}s ({backend}, transaction {res['id']}): "
                      f"{res['detail']}. "
                      f"Confirm from the management node within {rollback_after}s "
                      f"(salt-ssh '{me['name']}' kvmcluster_network.confirm, or the "
                      f"orchestration kvmcluster.orch.network) or it is rolled back at {at}.\n"
                      + "\n".join(lines))
    return ret


def boot_guard(name):
    """
    The boot-time rollback of unconfirmed network changes: a unit ordered before the
    network that undoes a transaction the node did not live to confirm.

    name
        State name.
    """
    ret = _ret(name)
    me = __salt__["kvmcluster_model.current"]()["self"]
    if not me.get("takeover", True):
        ret["comment"] = f"{me['name']} takes no bridge over: no network rollback to guard"
        return ret
    st = __salt__["kvmcluster_nettxn.boot_guard"]()
    want = {"installed": True, "enabled": True}
    diff = {k: {"old": st.get(k), "new": v} for k, v in want.items() if st.get(k) != v}
    if not diff:
        ret["comment"] = "the boot-time network rollback is installed and enabled"
        return ret
    ret["changes"] = diff
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "the boot-time network rollback would be installed and enabled"
        return ret
    try:
        st = __salt__["kvmcluster_nettxn.boot_guard"](install=True)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["changes"] = {}
        ret["comment"] = f"boot-time network rollback not installed: {exc}"
        return ret
    ret["result"] = st == want
    ret["comment"] = ("the boot-time network rollback is installed and enabled"
                      if ret["result"] else f"boot-time network rollback: {st}")
    return ret


def libvirt_network(name, network=None, bridge=None):
    """
    A libvirt network in bridge mode on the node's bridge, active and autostarted.

    name
        State name.
    network
        The libvirt network name (default: the model's ``network:libvirt_network``; none there
        means no network is managed).
    bridge
        The host bridge guests attach to (default: the node's bridge in the model).
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = _ret(name)
    view = __salt__["kvmcluster_model.current"]()
    network = network or view["network"].get("libvirt_network")
    bridge = bridge or view["self"]["bridge"]["name"]
    if not network:
        ret["comment"] = "no libvirt network asked for (kvmcluster:network:libvirt_network)"
        return ret
    name = network
    try:
        st = __salt__["kvmcluster_network.libvirt_network"](name, bridge)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = str(exc)
        return ret
    want = {"exists": True, "active": True, "autostart": True, "mode": "bridge",
            "bridge": bridge}
    diff = {k: {"old": st.get(k), "new": v} for k, v in want.items() if st.get(k) != v}
    if not diff:
        ret["comment"] = f"libvirt network {name} bridges guests onto {bridge}"
        return ret
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = diff
        ret["comment"] = f"libvirt network {name} would be defined on {bridge}"
        return ret
    if bridge not in __salt__["kvmcluster_network.runtime"]()["links"]:
        # The network follows its bridge: never started on a bridge that is not there.
        ret["result"] = False
        ret["comment"] = f"libvirt network {name} not started: bridge {bridge} does not exist"
        return ret
    try:
        st = __salt__["kvmcluster_network.libvirt_network"](name, bridge, define=True)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = str(exc)
        return ret
    left = {k: st.get(k) for k, v in want.items() if st.get(k) != v}
    ret["changes"] = diff
    ret["result"] = not left
    ret["comment"] = f"libvirt network {name} defined on {bridge}" if not left else \
        f"libvirt network {name} still differs: {left}"
    return ret
