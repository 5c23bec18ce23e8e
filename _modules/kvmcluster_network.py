"""
The node's bridge: what it should be (from the cluster model), what it is (files and
runtime), and the difference between the two.

Rendering lives in ``kvmcluster_netrender``, the transaction with its dead-man switch in
``kvmcluster_nettxn``; the state ``kvmcluster_network.bridged`` ties them together.
"""
import difflib
import glob
import ipaddress
import json
import os
import shutil
import subprocess

try:
    from salt.exceptions import CommandExecutionError
except ImportError:  # pragma: no cover
    class CommandExecutionError(Exception):
        pass

__virtualname__ = "kvmcluster_network"

SCAN = [
    "/etc/network/interfaces", "/etc/network/interfaces.d/*", "/etc/netplan/*.yaml",
    "/etc/NetworkManager/system-connections/*", "/etc/sysconfig/network-scripts/ifcfg-*",
]
LIBVIRT_NET_XML = """<network>
  <name>{name}</name>
  <forward mode='bridge'/>
  <bridge name='{bridge}'/>
</network>
"""


def __virtual__():
    return __virtualname__


def _active(unit):
    rc = __salt__["cmd.retcode"](["systemctl", "is-active", "--quiet", unit],
                                 python_shell=False, ignore_retcode=True)
    return rc == 0


def _has_network_scripts():
    """initscripts' network.service (the network-scripts package), which EL9 no longer ships."""
    return any(os.path.exists(p) for p in ("/etc/rc.d/init.d/network",
                                           "/usr/lib/systemd/system/network.service",
                                           "/etc/sysconfig/network-scripts/network-functions"))


def detect_backend():
    """
    The network backend that configures this node now: networkmanager where NetworkManager
    runs; otherwise netplan where /etc/netplan holds files; on RHEL ifcfg where network-scripts
    is installed (EL7/8), NetworkManager keyfiles otherwise (EL9 and later); ifupdown on Debian.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.detect_backend
    """
    family = __grains__.get("os_family")
    if _active("NetworkManager.service"):
        return "networkmanager"
    if glob.glob("/etc/netplan/*.yaml") and shutil.which("netplan"):
        return "netplan"
    if family == "RedHat":
        return "ifcfg" if _has_network_scripts() and _osmajor() < 9 else "networkmanager"
    if os.path.exists("/etc/network/interfaces") or shutil.which("ifup"):
        return "ifupdown"
    raise CommandExecutionError("cannot tell which network backend configures this node; set "
                                "kvmcluster:network:backend (or nodes:<id>:backend)")


def _osmajor():
    try:
        return int(__grains__.get("osmajorrelease") or 0)
    except (TypeError, ValueError):
        return 0


def check_backend(me, backend):
    """
    Refuse a backend this node cannot run, naming the pillar key: ifcfg needs network-scripts,
    which RHEL 9 and its rebuilds do not ship.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.check_backend '{"name": "kvm01"}' ifcfg
    """
    if backend != "ifcfg":
        return True
    if _osmajor() >= 9 or not _has_network_scripts():
        key = (f"kvmcluster:nodes:{me['name']}:backend" if me.get("backend") == "ifcfg"
               else "kvmcluster:network:backend")
        raise CommandExecutionError(
            f"[{me['name']}] {key}: ifcfg needs the network-scripts package and network.service, "
            f"which {__grains__.get('os', 'this OS')} {__grains__.get('osmajorrelease', '')} "
            "does not ship (RHEL 9 and its rebuilds dropped them); use networkmanager "
            "(keyfiles, the default there); nothing was changed")
    return True


def runtime():
    """
    Links, IPv4 addresses and default routes of this node.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.runtime
    """
    return __salt__["kvmcluster_nettxn.runtime"]()


def _nic_mac(link):
    slave = link.get("slave") or {}
    return (slave.get("perm_hwaddr") or link["mac"] or "").lower()


def plan(me, rt=None):
    """
    This node's network plan from its model entry ``me``: address, gateway, DNS, bridge,
    port and the MAC the bridge takes. Raises CommandExecutionError when a NIC named in
    pillar does not exist here.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.plan '{"name": "kvm01", ...}'
    """
    rt = rt or runtime()
    port = dict(me["port"])
    nics = list(port["slaves"]) if port["kind"] == "bond" else [port["name"]]
    key = f"kvmcluster:nodes:{me['name']}:" + ("bond:slaves" if port["kind"] == "bond" else "nic")
    phys = sorted(n for n, ln in rt["links"].items() if ln["kind"] is None and n != "lo")
    missing = [n for n in nics if n not in rt["links"]]
    if missing:
        verb = "does" if len(missing) == 1 else "do"
        raise CommandExecutionError(f"[{me['name']}] {key}: {', '.join(missing)} {verb} not "
                                    f"exist on this node (NICs here: {', '.join(phys) or 'none'}"
                                    "); nothing was changed")
    macs = [_nic_mac(rt["links"][n]) for n in nics]
    bridge = dict(me["bridge"])
    owned = {bridge["name"], port["name"], *nics}
    # Routes an operator added on the port (or already on the bridge) go with the address.
    # Identity is (family, destination, gateway): the metric is the backend's to choose
    # (NetworkManager gives a bridge 425), and carrying it would never converge.
    seen = {(r["family"], r["dst"], r.get("gateway"))
            for r in rt.get("static_routes", []) if r.get("dev") in owned}
    routes = [{"family": f, "dst": d, "gateway": g, "metric": None}
              for f, d, g in sorted(seen, key=lambda k: (k[0], k[1], k[2] or ""))]
    return {
        "name": me["name"], "address": me["address"], "ip": me["ip"], "gateway": me.get("gateway"),
        "address6": me.get("address6"), "gateway6": me.get("gateway6"),
        "ipv6_autoconf": me.get("ipv6_autoconf", True),
        "dns_servers": me.get("dns_servers", []), "dns_search": me.get("dns_search", []),
        "bridge": bridge, "port": port, "nics": nics, "routes": routes,
        "mac": (me.get("mac") or macs[0]).lower(), "nic_macs": macs,
    }


def read_files():
    """
    The current text of every file a backend may configure interfaces in.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.read_files
    """
    out = {}
    for pattern in SCAN:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path) and not path.endswith((".kvmcluster-new", "~")):
                with open(path, encoding="utf-8", errors="replace") as fh:
                    out[path] = fh.read()
    return out


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _mode(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _session():
    """The management session: the local address the management node reaches this node on,
    and the peer to prove the new path with (address, TCP port). Under salt-ssh the SSH
    connection's; for a minion its master's (when the master is given as an address)."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) == 4:
        return conn[2], {"address": conn[0], "port": 22}
    master = __opts__.get("master")
    try:
        ipaddress.ip_address(master)
    except (TypeError, ValueError):
        return None, None
    peer = {"address": master, "port": int(__opts__.get("master_port") or 4506)}
    try:
        got = subprocess.run(["ip", "-j", "route", "get", master], capture_output=True,
                             text=True, timeout=10, check=False)
        return (json.loads(got.stdout or "[]") or [{}])[0].get("prefsrc"), peer
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None, peer


def apply_bound(backend, devices, mode="restart"):
    """
    Seconds an apply plus its local check needs at least on ``backend`` for ``devices``
    interfaces; a rollback timeout below it is refused before anything changes.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.apply_bound networkmanager 2
    """
    if mode == "reload":
        return 15
    per = {"ifupdown": (10, 5), "networkmanager": (10, 5), "netplan": (12, 3),
           "ifcfg": (20, 3)}.get(backend, (20, 5))
    return per[0] + per[1] * int(devices) + 10


def _runtime_diff(p, rt):
    """What the runtime lacks compared with the plan, as a list of reasons."""
    br, port, nics = p["bridge"], p["port"], p["nics"]
    links, addrs = rt["links"], rt["addrs"]
    out = []
    b = links.get(br["name"])
    if not b or b["kind"] != "bridge":
        return [f"{br['name']} is not a bridge here"]
    if p["address"] not in addrs.get(br["name"], []):
        out.append(f"{br['name']} does not hold {p['address']}")
    if b["mac"] != p["mac"]:
        out.append(f"{br['name']} MAC is {b['mac']}, not {p['mac']}")
    if b["mtu"] != br["mtu"]:
        out.append(f"{br['name']} MTU is {b['mtu']}, not {br['mtu']}")
    if not b["up"]:
        out.append(f"{br['name']} is down")
    if port["kind"] == "bond":
        bd = links.get(port["name"])
        if not bd or bd["kind"] != "bond":
            out.append(f"{port['name']} is not a bond here")
        else:
            if bd["master"] != br["name"]:
                out.append(f"{port['name']} is not a port of {br['name']}")
            mode = bd["data"].get("mode")
            if mode != port["mode"]:
                out.append(f"{port['name']} mode is {mode}, not {port['mode']}")
            if bd["data"].get("miimon") != port["miimon"]:
                out.append(f"{port['name']} miimon is {bd['data'].get('miimon')}, "
                           f"not {port['miimon']}")
    upper = port["name"] if port["kind"] == "bond" else br["name"]
    for n in nics:
        if links.get(n, {}).get("master") != upper:
            out.append(f"{n} is not a port of {upper}")
    for n in [port["name"], *nics]:
        if addrs.get(n):
            out.append(f"{n} holds {', '.join(addrs[n])}")
    if p.get("gateway") and not any(r["gateway"] == p["gateway"] and r["dev"] == br["name"]
                                    for r in rt["routes"]):
        out.append(f"no default route via {p['gateway']} on {br['name']}")
    for a in p.get("address6") or []:
        if a not in addrs.get(br["name"], []):
            out.append(f"{br['name']} does not hold {a}")
    if p.get("gateway6") and not any(r["gateway"] == p["gateway6"] and r["dev"] == br["name"]
                                     for r in rt.get("routes6", [])):
        out.append(f"no IPv6 default route via {p['gateway6']} on {br['name']}")
    for r in rt.get("static_routes", []):
        if r.get("dev") in [port["name"], *nics]:
            out.append(f"route {r['dst']} is on {r['dev']}, not {br['name']}")
    return out


def guests_on(bridge, rt=None, own=()):
    """
    Ports of ``bridge`` other than the node's own port(s) ``own``: guests' taps.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.guests_on br0 own='[eth0]'
    """
    rt = rt or runtime()
    return sorted(n for n, ln in rt["links"].items()
                  if ln["master"] == bridge and n not in own)


def evaluate(me, backend=None, rollback_after=90, settings=None):
    """
    Target against current for this node: the backend, the file diffs, the runtime effect
    (addresses and routes that move, the bridge's MAC, whether the management session's
    address stays), the risk class, who confirms, and the transaction spec to apply it.

    settings
        The model's ``network`` block (``confirm``, ``check``); defaults: auto, arp.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.evaluate '{"name": "kvm01", ...}'
    """
    settings = settings or {}
    rt = runtime()
    p = plan(me, rt)
    backend = backend or detect_backend()
    check_backend(me, backend)
    current = read_files()
    resolv_plain = os.path.isfile("/etc/resolv.conf") and not os.path.islink("/etc/resolv.conf")
    target = __salt__["kvmcluster_netrender.target"](backend, p, current,
                                                     resolv_managed=resolv_plain)
    files, diffs = {}, {}
    for path, new in sorted(target.items()):
        old = current.get(path, _read(path))
        mode = __salt__["kvmcluster_netrender.file_mode"](path)
        if old == new and (new is None or _mode(path) == mode):
            continue
        files[path] = {"old": old, "new": new, "mode": mode, "old_mode": _mode(path)}
        if old == new:
            diffs[path] = f"mode {oct(_mode(path) or 0)} -> {oct(mode)}"
        elif new is None:
            diffs[path] = "removed (a copy is kept under /var/lib/kvmcluster/network/replaced)"
        else:
            diffs[path] = "".join(difflib.unified_diff(
                (old or "").splitlines(True), new.splitlines(True),
                fromfile=path if old is not None else "/dev/null", tofile=path))
    missing = _runtime_diff(p, rt)
    br, port, nics = p["bridge"]["name"], p["port"]["name"], p["nics"]
    owned = {br, port, *nics}
    wanted = [p["address"], *(p.get("address6") or [])]
    moves = []
    for dev in sorted(owned - {br}):
        for a in rt["addrs"].get(dev, []):
            moves.append({"address": a, "from": dev, "to": br if a in wanted else None})
        for a in rt.get("slaac", {}).get(dev, []):
            moves.append({"address": a, "from": dev,
                          "to": f"{br} (SLAAC)" if p.get("ipv6_autoconf", True) else None})
    for a in rt["addrs"].get(br, []):
        if a not in wanted:
            moves.append({"address": a, "from": br, "to": None})
    for a in wanted:
        if a not in rt["addrs"].get(br, []) and not any(m["address"] == a for m in moves):
            holder = [d for d, al in rt["addrs"].items() if a in al]
            moves.append({"address": a, "from": holder[0] if holder else None, "to": br})
    routes_moved = [dict(r, dev=br) for r in p["routes"]]
    route_moves = sorted({f"{r['dst']}{' via ' + r['gateway'] if r.get('gateway') else ''}: "
                          f"{r['dev']} -> {br}" for r in rt.get("static_routes", [])
                          if r.get("dev") in owned - {br}})
    route_old = sorted({f"via {r['gateway']} dev {r['dev']}" for r in rt["routes"]})
    route_new = [f"via {p['gateway']} dev {br}"] if p.get("gateway") else route_old
    route6_old = sorted({f"via {r['gateway']} dev {r['dev']}" for r in rt.get("routes6", [])
                         if r.get("dev") in owned or p.get("gateway6")})
    route6_new = [f"via {p['gateway6']} dev {br}"] if p.get("gateway6") else [
        x.replace(f"dev {port}", f"dev {br}") for x in route6_old]
    sess, peer = _session()
    sess_dev = next((d for d, al in rt["addrs"].items()
                     if sess and any(a.split("/")[0] == sess for a in al)), None)
    session_touched = bool(sess_dev in owned and (missing or files))
    kept = bool(sess) and (sess in (p["ip"], *[a.split("/")[0] for a in wanted])
                           or sess_dev not in owned)
    effect = {}
    if moves:
        effect["addresses"] = moves
    if route_moves:
        effect["routes"] = route_moves
    if sorted(route_old) != sorted(route_new):
        effect["default_route"] = {"old": route_old, "new": route_new}
    if sorted(route6_old) != sorted(route6_new):
        effect["default_route6"] = {"old": route6_old, "new": route6_new}
    mac_now = rt["links"].get(br, {}).get("mac")
    if mac_now != p["mac"]:
        effect["bridge_mac"] = {"old": mac_now, "new": p["mac"]}
    created = [d for d in __salt__["kvmcluster_netrender.devices_created"](p)
               if d not in rt["links"]]
    if created:
        effect["creates"] = created
    if sess:
        effect["management_session"] = {
            "address": sess, "interface": sess_dev, "touched": session_touched, "kept": kept}
    if not files and not missing:
        risk = "no-op"
    elif missing or moves or created or route_moves or "default_route" in effect:
        risk = "disruptive"
    else:
        risk = "non-disruptive"
    # Who confirms: the node itself when the session's address stays and its peer is known;
    # the management node otherwise (re-addressing, or confirm: manual).
    if settings.get("confirm", "auto") == "manual":
        confirm_by, why = "management", "network:confirm is manual"
    elif not sess or not peer:
        confirm_by, why = "management", "no management session to prove the new path with"
    elif not kept:
        confirm_by, why = "management", f"the management address {sess} moves"
    else:
        confirm_by, why = "node", (f"the management address {sess} stays; the node confirms "
                                   f"when {peer['address']} answers over {br}")
    effect["confirmation"] = {"by": confirm_by, "why": why}
    mode = "reload" if risk == "non-disruptive" else "restart"
    bound = apply_bound(backend, len(owned), mode)
    if risk != "no-op" and int(rollback_after) < bound:
        raise CommandExecutionError(
            f"[{me['name']}] kvmcluster:network:rollback_timeout: {rollback_after}s is shorter "
            f"than this {backend} change can take ({bound}s for {len(owned)} interfaces); "
            "raise it; nothing was changed")
    nm = backend == "ifcfg"
    spec = {
        "backend": backend, "bridge": br, "port": port, "nics": nics,
        "address": p["address"], "ip": p["ip"], "gateway": p.get("gateway"),
        "address6": list(p.get("address6") or []), "gateway6": p.get("gateway6"),
        "routes_moved": routes_moved, "files": files, "mode": mode,
        "created": created, "rollback_after": int(rollback_after),
        "confirm": "auto" if confirm_by == "node" else "manual", "peer": peer,
        "check": {"gateway": (settings.get("check") or {}).get("gateway", "arp")},
        "before": {
            "addrs": {d: rt["addrs"].get(d, []) for d in owned if d in rt["links"]},
            "routes": rt["routes"], "routes6": rt.get("routes6", []),
            "static_routes": [r for r in rt.get("static_routes", []) if r.get("dev") in owned],
            "masters": {n: rt["links"].get(n, {}).get("master") for n in nics},
            "ifupdown_up": _ifupdown_up(owned),
            "nm_active": _nm_ids([f for f, v in files.items() if v["new"] is None]),
            "nm_reup": _nm_ids([f for f, v in files.items()
                                if v["new"] is not None and v["old"] is not None]),
            "nm_enabled": nm and _enabled("NetworkManager.service"),
            "nm_running": nm and _active("NetworkManager.service"),
            "zone": _firewalld_zone(port),
        },
    }
    return {"backend": backend, "plan": p, "files": diffs, "runtime_missing": missing,
            "effect": effect, "risk": risk, "spec": spec,
            "guests": guests_on(br, rt, own={port, *nics})}


def _enabled(unit):
    rc = __salt__["cmd.retcode"](["systemctl", "is-enabled", "--quiet", unit],
                                 python_shell=False, ignore_retcode=True)
    return rc == 0


def _firewalld_zone(iface):
    """The firewalld zone ``iface`` is in, where firewalld runs (None otherwise)."""
    if not shutil.which("firewall-cmd") or not _active("firewalld.service"):
        return None
    out = __salt__["cmd.run_stdout"](["firewall-cmd", f"--get-zone-of-interface={iface}"],
                                     python_shell=False, ignore_retcode=True)
    zone = (out or "").strip()
    return zone if zone and " " not in zone and zone != "no zone" else None


def _ifupdown_up(names):
    return sorted(n for n in _ifstate() if n in names)


def _ifstate():
    text = _read("/run/network/ifstate") or ""
    return {line.split("=")[0].strip() for line in text.splitlines() if line.strip()}


def _nm_ids(removed):
    ids = []
    for path in removed:
        if path.startswith("/etc/NetworkManager/"):
            info = __salt__["kvmcluster_netrender.nm_keyfile_interface"](_read(path) or "")
            if info and info[0]:
                ids.append(info[0])
    return ids


def confirm(txn=None):
    """
    Confirm this node's pending network change (see ``kvmcluster_nettxn.confirm``): run it
    from the management node after ``state.apply``, within ``network:rollback_timeout``.

    CLI Example:

    .. code-block:: bash

        salt-ssh '*' kvmcluster_network.confirm
    """
    return __salt__["kvmcluster_nettxn.confirm"](txn)


def libvirt_network(name, bridge, define=False):
    """
    The libvirt network ``name`` (bridge mode on ``bridge``): whether it exists, is active and
    autostarts, and whether its bridge matches. With ``define=True`` make it so.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.libvirt_network host-bridge br0 define=True
    """
    try:
        libvirt = __utils__["kvmcluster_virt.binding"]()
    except CommandExecutionError:
        if define:
            raise
        return {"exists": False, "binding": False}
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    uri = __opts__.get("kvmcluster_libvirt_uri", "qemu:///system")
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"cannot connect to libvirt at {uri}: {exc}") from exc
    try:
        def state():
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError:
                return None, {"exists": False}
            root = ElementTree.fromstring(net.XMLDesc(0))
            fwd = root.find("forward")
            brel = root.find("bridge")
            return net, {"exists": True, "active": bool(net.isActive()),
                         "autostart": bool(net.autostart()),
                         "mode": fwd.get("mode") if fwd is not None else None,
                         "bridge": brel.get("name") if brel is not None else None}
        net, st = state()
        if define:
            if st["exists"] and (st["mode"] != "bridge" or st["bridge"] != bridge):
                if net.isActive():
                    net.destroy()
                net.undefine()
                net, st = None, {"exists": False}
            if not st["exists"]:
                net = conn.networkDefineXML(LIBVIRT_NET_XML.format(name=name, bridge=bridge))
            if not net.isActive():
                net.create()
            if not net.autostart():
                net.setAutostart(1)
            net, st = state()
        return st
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"libvirt network {name}: {exc}") from exc
    finally:
        conn.close()
