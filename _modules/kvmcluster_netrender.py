"""
Render a node's bridge configuration for each network backend.

Pure functions, no host access: given the node's network plan (from the cluster model plus
the port's MAC) and the current text of the backend files, return the complete target set of
files. A file mapped to ``None`` is to be absent. Each backend also takes the bridged
interfaces away from the other backends' files found on the node, so that exactly one
configuration owns them.
"""
import configparser
import posixpath
import re
import shlex

try:
    import yaml
except ImportError:  # pragma: no cover - Salt always ships PyYAML
    yaml = None

__virtualname__ = "kvmcluster_netrender"

HEADER = "# Managed by kvmcluster (Salt). Local edits are replaced on the next run.\n"
NM_DIR = "/etc/NetworkManager/system-connections"
NETPLAN_DIR = "/etc/netplan"
IFUPDOWN_FILE = "/etc/network/interfaces"
IFUPDOWN_DIR = "/etc/network/interfaces.d"
IFCFG_DIR = "/etc/sysconfig/network-scripts"
RESOLV_CONF = "/etc/resolv.conf"

OURS = {
    "ifupdown": [posixpath.join(IFUPDOWN_DIR, "kvmcluster")],
    "netplan": [posixpath.join(NETPLAN_DIR, "60-kvmcluster.yaml")],
}
# Files that hold secrets or that the tools refuse when world-readable.
PRIVATE_PREFIXES = (NM_DIR + "/", NETPLAN_DIR + "/")


def __virtual__():
    return __virtualname__


def interfaces_of(plan):
    """
    Every interface the plan owns: the bridge, the port and the port's slaves.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_netrender.interfaces_of '{"bridge": {"name": "br0"}, "port": {...}}'
    """
    port = plan["port"]
    return [plan["bridge"]["name"], port["name"], *port.get("slaves", [])]


def devices_created(plan):
    """
    Virtual devices the plan creates (removed again on rollback if they were new).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_netrender.devices_created '{...}'
    """
    out = [plan["bridge"]["name"]]
    if plan["port"]["kind"] == "bond":
        out.append(plan["port"]["name"])
    return out


def _nics_of(plan):
    port = plan["port"]
    return list(port["slaves"]) if port["kind"] == "bond" else [port["name"]]


def file_mode(path):
    """
    The mode a rendered file gets (0600 where the tools want it private).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_netrender.file_mode /etc/netplan/60-kvmcluster.yaml
    """
    return 0o600 if path.startswith(PRIVATE_PREFIXES) else 0o644


# ---- ifupdown ---------------------------------------------------------------------------

_STANZA = re.compile(r"^(iface|mapping|auto|allow-\S+|source|source-directory|rename)\b")


def _strip_ifupdown(text, names):
    """``text`` without the stanzas and auto/allow entries of ``names``."""
    names = set(names)
    out, skipping = [], False
    for line in text.splitlines():
        m = _STANZA.match(line.strip()) if not line[:1].isspace() else None
        if m:
            skipping = False
            words = line.split()
            if words[0] in ("iface", "mapping") and len(words) > 1 and words[1] in names:
                skipping = True
                continue
            if words[0] == "auto" or words[0].startswith("allow-"):
                kept = [w for w in words[1:] if w not in names]
                if len(kept) != len(words) - 1:
                    if kept:
                        out.append(" ".join([words[0], *kept]))
                    continue
        elif skipping:
            # Option lines (indented or not) and comments inside a dropped stanza go with it.
            if line.strip():
                continue
            skipping = False
        out.append(line)
    result = "\n".join(out).rstrip("\n") + "\n"
    return re.sub(r"\n{3,}", "\n\n", result)


def _ifupdown_main(text, names):
    text = _strip_ifupdown(text if text is not None else "auto lo\niface lo inet loopback\n",
                          names)
    sourced = any(re.match(r"^\s*(source\s+/etc/network/interfaces\.d/\*|"
                           r"source-directory\s+/etc/network/interfaces\.d/?)\s*$", line)
                  for line in text.splitlines())
    if not sourced:
        text = "source /etc/network/interfaces.d/*\n\n" + text
    return text


def _render_ifupdown(plan):
    br, port = plan["bridge"], plan["port"]
    lines = [HEADER.rstrip("\n")]
    for nic in _nics_of(plan):
        lines += ["", f"iface {nic} inet manual", f"    mtu {port['mtu']}"]
    if port["kind"] == "bond":
        lines += [
            "", f"auto {port['name']}", f"iface {port['name']} inet manual",
            f"    bond-slaves {' '.join(port['slaves'])}",
            f"    bond-mode {port['mode']}",
            f"    bond-miimon {port['miimon']}",
            f"    bond-updelay {port['updelay']}",
            f"    bond-downdelay {port['downdelay']}",
        ]
        if port["mode"] == "802.3ad":
            lines.append(f"    bond-lacp-rate {port['lacp_rate']}")
        if port.get("xmit_hash_policy"):
            lines.append(f"    bond-xmit-hash-policy {port['xmit_hash_policy']}")
        lines.append(f"    mtu {port['mtu']}")
    lines += [
        "", f"auto {br['name']}", f"iface {br['name']} inet static",
        f"    address {plan['address']}",
    ]
    if plan.get("gateway"):
        lines.append(f"    gateway {plan['gateway']}")
    if plan.get("dns_servers"):
        lines.append(f"    dns-nameservers {' '.join(plan['dns_servers'])}")
    if plan.get("dns_search"):
        lines.append(f"    dns-search {' '.join(plan['dns_search'])}")
    lines += [f"    up ip -4 route replace {r['dst']}{_via(r)} dev {br['name']}{_metric(r)}"
              for r in _routes(plan, 4)]
    lines += [
        f"    bridge_ports {port['name']}",
        f"    bridge_stp {'on' if br['stp'] else 'off'}",
        f"    bridge_fd {br['forward_delay']}",
        "    bridge_maxwait 0",
        f"    hwaddress ether {plan['mac']}",
        f"    mtu {br['mtu']}",
    ]
    six = plan.get("address6") or []
    if six:
        lines += ["", f"iface {br['name']} inet6 static", f"    address {six[0]}"]
        if plan.get("gateway6"):
            lines.append(f"    gateway {plan['gateway6']}")
        lines += [f"    up ip -6 addr replace {a} dev {br['name']}" for a in six[1:]]
        lines.append(f"    autoconf {1 if plan.get('ipv6_autoconf', True) else 0}")
        lines.append(f"    accept_ra {2 if plan.get('ipv6_autoconf', True) else 0}")
    elif plan.get("ipv6_autoconf", True):
        lines += ["", f"iface {br['name']} inet6 auto"]
    if six or plan.get("ipv6_autoconf", True):
        lines += [f"    up ip -6 route replace {r['dst']}{_via(r)} dev {br['name']}{_metric(r)}"
                  for r in _routes(plan, 6)]
    return "\n".join(lines) + "\n"


def _routes(plan, family):
    return [r for r in plan.get("routes") or [] if r["family"] == family]


def _via(r):
    return f" via {r['gateway']}" if r.get("gateway") else ""


def _metric(r):
    return f" metric {r['metric']}" if r.get("metric") else ""


# ---- NetworkManager keyfiles ------------------------------------------------------------

def _nm_name(iface):
    return f"kvmcluster-{iface}"


def _ini(sections):
    out = [HEADER.rstrip("\n")]
    for name, items in sections:
        out.append(f"[{name}]")
        out += [f"{k}={v}" for k, v in items]
        out.append("")
    return "\n".join(out)


def _render_networkmanager(plan):
    """Keyfiles (NM 1.30+) for the bridge, the bond and each NIC, keyed by path."""
    br, port = plan["bridge"], plan["port"]
    files = {}
    ipv4 = [("method", "manual"), ("address1", plan["address"] + (
        f",{plan['gateway']}" if plan.get("gateway") else ""))]
    if plan.get("dns_servers"):
        ipv4.append(("dns", ";".join(plan["dns_servers"]) + ";"))
    if plan.get("dns_search"):
        ipv4.append(("dns-search", ";".join(plan["dns_search"]) + ";"))
    ipv4 += _nm_routes(plan, 4)
    six, auto6 = plan.get("address6") or [], plan.get("ipv6_autoconf", True)
    # eui64: the bridge carries the port's MAC, so SLAAC gives it the port's old address.
    ipv6 = [("method", "auto" if auto6 else ("manual" if six else "ignore"))]
    if auto6 or six:
        ipv6.append(("addr-gen-mode", "eui64"))
    for i, a in enumerate(six, 1):
        gw = f",{plan['gateway6']}" if i == 1 and plan.get("gateway6") else ""
        ipv6.append((f"address{i}", a + gw))
    if auto6 or six:
        ipv6 += _nm_routes(plan, 6)
    files[_nm_name(br["name"])] = [
        ("connection", [("id", _nm_name(br["name"])), ("type", "bridge"),
                        ("interface-name", br["name"]), ("autoconnect", "true"),
                        ("autoconnect-slaves", "1")]),
        ("ethernet", [("mtu", br["mtu"])]),
        ("bridge", [("mac-address", plan["mac"].upper()), ("stp", str(br["stp"]).lower()),
                    ("forward-delay", br["forward_delay"])]),
        ("ipv4", ipv4),
        ("ipv6", ipv6),
    ]
    nic_master = br["name"]
    nic_type = "bridge"
    if port["kind"] == "bond":
        opts = [("mode", port["mode"]), ("miimon", port["miimon"]),
                ("updelay", port["updelay"]), ("downdelay", port["downdelay"])]
        if port["mode"] == "802.3ad":
            opts.append(("lacp_rate", port["lacp_rate"]))
        if port.get("xmit_hash_policy"):
            opts.append(("xmit_hash_policy", port["xmit_hash_policy"]))
        files[_nm_name(port["name"])] = [
            ("connection", [("id", _nm_name(port["name"])), ("type", "bond"),
                            ("interface-name", port["name"]), ("master", br["name"]),
                            ("slave-type", "bridge"), ("autoconnect", "true"),
                            ("autoconnect-slaves", "1")]),
            ("ethernet", [("mtu", port["mtu"])]),
            ("bond", opts),
        ]
        nic_master, nic_type = port["name"], "bond"
    for nic in _nics_of(plan):
        files[_nm_name(nic)] = [
            ("connection", [("id", _nm_name(nic)), ("type", "ethernet"),
                            ("interface-name", nic), ("master", nic_master),
                            ("slave-type", nic_type), ("autoconnect", "true")]),
            ("ethernet", [("mtu", port["mtu"])]),
        ]
    return {posixpath.join(NM_DIR, f"{name}.nmconnection"): _ini(sections)
            for name, sections in files.items()}


def _nm_routes(plan, family):
    out = []
    for i, r in enumerate(_routes(plan, family), 1):
        val = r["dst"] + (f",{r['gateway']}" if r.get("gateway") else "")
        if r.get("metric"):
            val += ("" if r.get("gateway") else ",") + f",{r['metric']}"
        out.append((f"route{i}", val))
    return out


def nm_keyfile_interface(text):
    """
    (id, interface-name, mac) of a keyfile's connection, or None if unreadable.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_netrender.nm_keyfile_interface \\
            "$(cat /etc/NetworkManager/system-connections/x.nmconnection)"
    """
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(text)
    except configparser.Error:
        return None
    get = lambda s, k: cp.get(s, k, fallback=None)  # noqa: E731
    return (get("connection", "id"), get("connection", "interface-name"),
            (get("ethernet", "mac-address") or "").lower() or None)


# ---- netplan ----------------------------------------------------------------------------

def _netplan_doc(plan):
    br, port = plan["bridge"], plan["port"]
    eth = {nic: {"dhcp4": False, "dhcp6": False, "accept-ra": False, "mtu": port["mtu"]}
           for nic in _nics_of(plan)}
    net = {"version": 2, "renderer": "networkd", "ethernets": eth}
    if port["kind"] == "bond":
        params = {"mode": port["mode"], "mii-monitor-interval": port["miimon"],
                  "up-delay": port["updelay"], "down-delay": port["downdelay"]}
        if port["mode"] == "802.3ad":
            params["lacp-rate"] = port["lacp_rate"]
        if port.get("xmit_hash_policy"):
            params["transmit-hash-policy"] = port["xmit_hash_policy"]
        net["bonds"] = {port["name"]: {"interfaces": list(port["slaves"]), "mtu": port["mtu"],
                                       "dhcp4": False, "dhcp6": False, "accept-ra": False,
                                       "parameters": params}}
    auto6 = bool(plan.get("ipv6_autoconf", True))
    bridge = {
        "interfaces": [port["name"]], "macaddress": plan["mac"], "mtu": br["mtu"],
        "dhcp4": False, "dhcp6": False, "accept-ra": auto6,
        "addresses": [plan["address"], *(plan.get("address6") or [])],
        "parameters": {"stp": bool(br["stp"]), "forward-delay": br["forward_delay"]},
    }
    if auto6:
        bridge["ipv6-address-generation"] = "eui64"
    routes = []
    if plan.get("gateway"):
        routes.append({"to": "default", "via": plan["gateway"]})
    if plan.get("gateway6"):
        routes.append({"to": "::/0", "via": plan["gateway6"]})
    for r in plan.get("routes") or []:
        route = {"to": r["dst"]}
        if r.get("gateway"):
            route["via"] = r["gateway"]
        else:
            route["scope"] = "link"
        if r.get("metric"):
            route["metric"] = r["metric"]
        routes.append(route)
    if routes:
        bridge["routes"] = routes
    if plan.get("dns_servers") or plan.get("dns_search"):
        bridge["nameservers"] = {"addresses": list(plan.get("dns_servers") or []),
                                 "search": list(plan.get("dns_search") or [])}
    net["bridges"] = {br["name"]: bridge}
    return {"network": net}


def _render_netplan(plan):
    return HEADER + yaml.safe_dump(_netplan_doc(plan), default_flow_style=False, sort_keys=False)


def _netplan_binds(d, names, macs):
    """Whether a netplan definition keyed by another id binds one of ``names`` (by match,
    set-name or NetworkManager passthrough): Ubuntu stores NM profiles as ``NM-<uuid>``."""
    if not isinstance(d, dict):
        return False
    match = d.get("match") if isinstance(d.get("match"), dict) else {}
    nm = d.get("networkmanager") if isinstance(d.get("networkmanager"), dict) else {}
    passthrough = nm.get("passthrough") if isinstance(nm.get("passthrough"), dict) else {}
    bound = {match.get("name"), d.get("set-name"), passthrough.get("connection.interface-name")}
    mac = str(match.get("macaddress") or passthrough.get("ethernet.mac-address") or "").lower()
    return bool(bound & set(names)) or bool(mac and mac in macs)


def _strip_netplan(text, names, macs=()):
    """A netplan file without definitions of ``names``; None if nothing else is left."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return text
    netw = doc.get("network") if isinstance(doc, dict) else None
    if not isinstance(netw, dict):
        return text
    touched = False
    for kind in ("ethernets", "bonds", "bridges", "vlans", "wifis"):
        defs = netw.get(kind)
        if not isinstance(defs, dict):
            continue
        for n in [n for n, d in defs.items() if n in names or _netplan_binds(d, names, macs)]:
            del defs[n]
            touched = True
        if not defs:
            del netw[kind]
    if not touched:
        return text
    if not set(netw) - {"version", "renderer"}:
        return None
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)


# ---- RHEL ifcfg (initscripts) -----------------------------------------------------------

def _ifcfg(pairs):
    out = [HEADER.rstrip("\n")]
    for k, v in pairs:
        v = str(v)
        out.append(f"{k}={shlex.quote(v) if v else chr(34) * 2}")
    return "\n".join(out) + "\n"


def _render_ifcfg(plan):
    br, port = plan["bridge"], plan["port"]
    ip, prefix = plan["address"].split("/")
    br_pairs = [("DEVICE", br["name"]), ("TYPE", "Bridge"), ("ONBOOT", "yes"),
                ("BOOTPROTO", "none"), ("IPADDR", ip), ("PREFIX", prefix)]
    if plan.get("gateway"):
        br_pairs += [("GATEWAY", plan["gateway"]), ("DEFROUTE", "yes")]
    for i, d in enumerate(plan.get("dns_servers") or [], 1):
        br_pairs.append((f"DNS{i}", d))
    if plan.get("dns_search"):
        br_pairs.append(("DOMAIN", " ".join(plan["dns_search"])))
    six, auto6 = plan.get("address6") or [], plan.get("ipv6_autoconf", True)
    br_pairs += [("STP", "yes" if br["stp"] else "no"), ("DELAY", br["forward_delay"]),
                 ("MACADDR", plan["mac"]), ("MTU", br["mtu"]),
                 ("IPV6INIT", "yes" if auto6 or six else "no")]
    if auto6 or six:
        br_pairs.append(("IPV6_AUTOCONF", "yes" if auto6 else "no"))
    if six:
        br_pairs.append(("IPV6ADDR", six[0]))
        if six[1:]:
            br_pairs.append(("IPV6ADDR_SECONDARIES", " ".join(six[1:])))
    if plan.get("gateway6"):
        br_pairs.append(("IPV6_DEFAULTGW", plan["gateway6"]))
    br_pairs.append(("NM_CONTROLLED", "no"))
    files = {f"ifcfg-{br['name']}": br_pairs}
    nic_pairs = [("BRIDGE", br["name"])]
    if port["kind"] == "bond":
        opts = [f"mode={port['mode']}", f"miimon={port['miimon']}",
                f"updelay={port['updelay']}", f"downdelay={port['downdelay']}"]
        if port["mode"] == "802.3ad":
            opts.append(f"lacp_rate={port['lacp_rate']}")
        if port.get("xmit_hash_policy"):
            opts.append(f"xmit_hash_policy={port['xmit_hash_policy']}")
        files[f"ifcfg-{port['name']}"] = [
            ("DEVICE", port["name"]), ("TYPE", "Bond"), ("BONDING_MASTER", "yes"),
            ("BONDING_OPTS", " ".join(opts)), ("BRIDGE", br["name"]), ("ONBOOT", "yes"),
            ("BOOTPROTO", "none"), ("MTU", port["mtu"]), ("IPV6INIT", "no"),
            ("NM_CONTROLLED", "no")]
        nic_pairs = [("MASTER", port["name"]), ("SLAVE", "yes")]
    for nic in _nics_of(plan):
        files[f"ifcfg-{nic}"] = [("DEVICE", nic), ("TYPE", "Ethernet"), ("ONBOOT", "yes"),
                                 ("BOOTPROTO", "none"), *nic_pairs, ("MTU", port["mtu"]),
                                 ("IPV6INIT", "no"), ("NM_CONTROLLED", "no")]
    out = {posixpath.join(IFCFG_DIR, name): _ifcfg(pairs) for name, pairs in files.items()}
    for family, name in ((4, "route"), (6, "route6")):
        lines = [f"{r['dst']}{_via(r)} dev {br['name']}{_metric(r)}"
                 for r in _routes(plan, family)]
        if lines:
            out[posixpath.join(IFCFG_DIR, f"{name}-{br['name']}")] = \
                HEADER + "\n".join(lines) + "\n"
    return out


def parse_ifcfg(text):
    """
    An ifcfg file as a dict, read the way initscripts sources it (shell assignments).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_netrender.parse_ifcfg "$(cat /etc/sysconfig/network-scripts/ifcfg-br0)"
    """
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", s)
        if not m:
            raise ValueError(f"line {n}: not a shell variable assignment: {line!r}")
        words = shlex.split(m.group(2), posix=True)
        if len(words) > 1:
            raise ValueError(f"line {n}: value of {m.group(1)} has unquoted spaces")
        out[m.group(1)] = words[0] if words else ""
    return out


# ---- resolv.conf --------------------------------------------------------------------------

def _render_resolv(plan):
    lines = [HEADER.rstrip("\n")]
    if plan.get("dns_search"):
        lines.append("search " + " ".join(plan["dns_search"]))
    lines += [f"nameserver {d}" for d in plan.get("dns_servers") or []]
    return "\n".join(lines) + "\n"


# ---- the complete target ------------------------------------------------------------------

def target(backend, plan, current, resolv_managed=False):
    """
    The complete target file set for ``backend``.

    current
        ``{path: text}`` of the backend files found on the node (the files of every backend
        that may also configure these interfaces: ifupdown, netplan, NM keyfiles, ifcfg).
    resolv_managed
        Whether /etc/resolv.conf is a plain file nobody else writes (then it is rendered).

    Returns ``{path: text or None}``: only paths that are ours or that change.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_netrender.target ifupdown '{...plan...}' '{}'
    """
    # The second line of defence: no value of the plan holds a character the four grammars
    # (stanzas, keyfiles, YAML, shell) would read as structure.
    __utils__["kvmcluster_safe.check"](f"{backend} network configuration", "network",
                                       {"plan": plan})
    names = set(interfaces_of(plan))
    out = {}
    if backend == "ifupdown":
        out[OURS["ifupdown"][0]] = _render_ifupdown(plan)
    elif backend == "netplan":
        out[OURS["netplan"][0]] = _render_netplan(plan)
    elif backend == "networkmanager":
        out.update(_render_networkmanager(plan))
    elif backend == "ifcfg":
        out.update(_render_ifcfg(plan))
    else:
        raise ValueError(f"unknown backend {backend!r}")

    for path, text in sorted(current.items()):
        if path in out or text is None:
            continue
        if path == IFUPDOWN_FILE:
            new = _ifupdown_main(text, names) if backend == "ifupdown" \
                else _strip_ifupdown(text, names)
        elif path.startswith(IFUPDOWN_DIR + "/"):
            new = _strip_ifupdown(text, names)
        elif path.startswith(NETPLAN_DIR + "/"):
            new = _strip_netplan(text, names, {m.lower() for m in plan.get("nic_macs", [])})
        elif path.startswith(NM_DIR + "/"):
            info = nm_keyfile_interface(text)
            macs = {m.lower() for m in plan.get("nic_macs", [])}
            new = None if info and (info[1] in names or (info[2] and info[2] in macs)) else text
        elif path.startswith(IFCFG_DIR + "/ifcfg-"):
            try:
                dev = parse_ifcfg(text).get("DEVICE") or path.rsplit("ifcfg-", 1)[1]
            except ValueError:
                dev = path.rsplit("ifcfg-", 1)[1]
            new = None if dev in names else text
        else:
            new = text
        if new != text:
            out[path] = new
    if backend == "ifupdown" and IFUPDOWN_FILE not in out:
        out[IFUPDOWN_FILE] = _ifupdown_main(current.get(IFUPDOWN_FILE), names)
        if out[IFUPDOWN_FILE] == current.get(IFUPDOWN_FILE):
            del out[IFUPDOWN_FILE]
    if resolv_managed and backend != "networkmanager":
        out[RESOLV_CONF] = _render_resolv(plan)
    return out
