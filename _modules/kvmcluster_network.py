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
import time

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


def detect_backend():
    """
    The network backend that configures this node now: networkmanager where NetworkManager
    runs; otherwise netplan where /etc/netplan holds files; ifcfg on RHEL; ifupdown on Debian.

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
        return "ifcfg" if os.path.isdir("/etc/sysconfig/network-scripts") else "networkmanager"
    if os.path.exists("/etc/network/interfaces") or shutil.which("ifup"):
        return "ifupdown"
    raise CommandExecutionError("cannot tell which network backend configures this node; set "
                                "kvmcluster:network:backend (or nodes:<id>:backend)")


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
        raise CommandExecutionError(f"[{me['name']}] {key}: {', '.join(missing)} "
                                    f"{'does' if len(missing) == 1 else 'do'} not exist on this node (NICs here: {', '.join(phys) or 'none'}); "
                                    "nothing was changed")
    macs = [_nic_mac(rt["links"][n]) for n in nics]
    return {
        "name": me["name"], "address": me["address"], "ip": me["ip"], "gateway": me.get("gateway"),
        "dns_servers": me.get("dns_servers", []), "dns_search": me.get("dns_search", []),
        "bridge": dict(me["bridge"]), "port": port, "nics": nics,
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


def _session_address():
    """The local address the management node reaches this node on: the SSH session's under
    salt-ssh, the one towards the master (when it is given as an address) for a minion."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) == 4:
        return conn[2]
    master = __opts__.get("master")
    try:
        ipaddress.ip_address(master)
    except (TypeError, ValueError):
        return None
    try:
        got = subprocess.run(["ip", "-j", "route", "get", master], capture_output=True,
                             text=True, timeout=10, check=False)
        return (json.loads(got.stdout or "[]") or [{}])[0].get("prefsrc")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


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


def evaluate(me, backend=None, rollback_after=90):
    """
    Target against current for this node: the backend, the file diffs, the runtime effect
    (addresses and default route that move, the bridge's MAC, whether the management
    session's interface is touched), the risk class, and the transaction spec to apply it.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_network.evaluate '{"name": "kvm01", ...}'
    """
    rt = runtime()
    p = plan(me, rt)
    backend = backend or detect_backend()
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
    moves = []
    for dev in sorted(owned - {br}):
        for a in rt["addrs"].get(dev, []):
            moves.append({"address": a, "from": dev, "to": br if a == p["address"] else None})
    if p["address"] not in rt["addrs"].get(br, []) and not any(
            m["address"] == p["address"] for m in moves):
        holder = [d for d, al in rt["addrs"].items() if p["address"] in al]
        moves.append({"address": p["address"], "from": holder[0] if holder else None, "to": br})
    route_old = [f"via {r['gateway']} dev {r['dev']}" for r in rt["routes"]]
    route_new = [f"via {p['gateway']} dev {br}"] if p.get("gateway") else route_old
    sess = _session_address()
    sess_dev = next((d for d, al in rt["addrs"].items()
                     if sess and any(a.split("/")[0] == sess for a in al)), None)
    session_touched = bool(sess_dev in owned and (missing or files))
    effect = {}
    if moves:
        effect["addresses"] = moves
    if sorted(route_old) != sorted(route_new):
        effect["default_route"] = {"old": route_old, "new": route_new}
    mac_now = rt["links"].get(br, {}).get("mac")
    if mac_now != p["mac"]:
        effect["bridge_mac"] = {"old": mac_now, "new": p["mac"]}
    created = [d for d in __salt__["kvmcluster_netrender.devices_created"](p)
               if d not in rt["links"]]
    if created:
        effect["creates"] = created
    if sess:
        effect["management_session"] = {
            "address": sess, "interface": sess_dev, "touched": session_touched,
            "kept": sess == p["ip"] or sess_dev not in owned}
    if not files and not missing:
        risk = "no-op"
    elif missing or moves or created or "default_route" in effect:
        risk = "disruptive"
    else:
        risk = "non-disruptive"
    spec = {
        "backend": backend, "bridge": br, "port": port, "nics": nics,
        "address": p["address"], "gateway": p.get("gateway"), "files": files,
        "created": created, "rollback_after": int(rollback_after),
        "deadline": time.time() + int(rollback_after),
        "before": {
            "addrs": {d: rt["addrs"].get(d, []) for d in owned if d in rt["links"]},
            "routes": rt["routes"],
            "masters": {n: rt["links"].get(n, {}).get("master") for n in nics},
            "ifupdown_up": _ifupdown_up(owned),
            "nm_active": _nm_ids([f for f, v in files.items() if v["new"] is None]),
            "nm_reup": _nm_ids([f for f, v in files.items()
                                if v["new"] is not None and v["old"] is not None]),
        },
    }
    return {"backend": backend, "plan": p, "files": diffs, "runtime_missing": missing,
            "effect": effect, "risk": risk, "spec": spec,
            "guests": guests_on(br, rt, own={port, *nics})}


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
        import libvirt  # pylint: disable=import-outside-toplevel
    except ImportError:
        if define:
            raise CommandExecutionError("python3-libvirt is not installed") from None
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
