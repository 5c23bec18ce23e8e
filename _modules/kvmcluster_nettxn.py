"""
Network transactions with a dead-man switch.

A transaction saves the files it rewrites and the runtime state of the interfaces it takes
over, arms a guard timer, applies the new configuration and checks it locally. Then:

- when the management session's address is kept and its peer answers over the new path
  (neighbour resolution plus a TCP answer), the node confirms the transaction itself;
- otherwise (re-addressing, a failed proof, ``network:confirm: manual``) a rollback timer of
  ``rollback_after`` seconds starts at the end of the local check, and only a confirmation
  from the management node (a new connection calling ``confirm``) disarms it.

A node that restarts while a transaction is unconfirmed rolls it back at boot, before its
network comes up (``boot`` below, run by a persistent unit); a transaction whose timer got
lost is rolled back when it is found (``pending``/``begin``), so none stays pending forever.

The apply and the rollbacks run as systemd units, not in the caller's session: a killed SSH
session neither stops an apply half-way nor cancels the rollback. For that this file is also
a standalone script (standard library only), copied next to the transactions.
"""
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

try:
    from salt.exceptions import CommandExecutionError
except ImportError:  # run as a script by systemd
    class CommandExecutionError(Exception):
        pass

__virtualname__ = "kvmcluster_nettxn"

BASE = "/var/lib/kvmcluster/network"
UNIT_PREFIX = "kvmcluster-net"
BOOT_UNIT = "kvmcluster-net-boot-rollback.service"
BOOT_UNIT_PATH = f"/etc/systemd/system/{BOOT_UNIT}"
SCRIPT_NAME = "kvmcluster-nettxn.py"
CHECK_TIMEOUT = 30
FINAL = ("confirmed", "rolled-back", "failed")
KEEP = 10
# A neighbour entry in one of these states has a link-layer address: the host answered.
NEIGH_OK = ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP")
# Routes the kernel or a protocol made; only the ones an operator added move to the bridge.
NOT_STATIC = ("kernel", "ra", "dhcp", "redirect")


def __virtual__():
    return __virtualname__


# ---- small helpers (no Salt) --------------------------------------------------------------

def _run(argv, timeout=60, check=False):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=max(1, timeout),
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if check:
            raise CommandExecutionError(f"{' '.join(map(str, argv))}: {exc}") from exc
        return 255, "", str(exc)
    if check and p.returncode:
        raise CommandExecutionError(f"{' '.join(map(str, argv))} exited {p.returncode}: "
                                    f"{(p.stderr or p.stdout).strip()}")
    return p.returncode, p.stdout, p.stderr


def _ip_json(*args):
    rc, out, err = _run(["ip", "-j", *args], timeout=15)
    if rc:
        raise CommandExecutionError(f"ip {' '.join(args)}: {err.strip()}")
    return json.loads(out or "[]")


def _route(r, family):
    return {"family": family, "dst": r.get("dst"), "gateway": r.get("gateway"),
            "dev": r.get("dev"), "metric": r.get("metric")}


def runtime():
    """
    Links, addresses (IPv4 and global IPv6), default routes (``routes``: IPv4, ``routes6``:
    IPv6) and the static routes an operator added (``static_routes``), as ``ip -j`` reports
    them. SLAAC addresses are listed apart (``slaac``): the kernel makes them again.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.runtime
    """
    links = {}
    for ln in _ip_json("-d", "link", "show"):
        info = ln.get("linkinfo") or {}
        links[ln["ifname"]] = {
            "mac": (ln.get("address") or "").lower(), "mtu": ln.get("mtu"),
            "master": ln.get("master"), "kind": info.get("info_kind"),
            "data": info.get("info_data") or {}, "slave": info.get("info_slave_data") or {},
            "up": "UP" in (ln.get("flags") or []),
        }
    addrs, slaac = {}, {}
    for ln in _ip_json("addr", "show"):
        for a in ln.get("addr_info", []):
            fam = a.get("family")
            if fam == "inet6" and a.get("scope") != "global":
                continue
            if fam not in ("inet", "inet6"):
                continue
            cidr = f"{a['local']}/{a['prefixlen']}"
            dyn = fam == "inet6" and (a.get("dynamic") or a.get("mngtmpaddr"))
            (slaac if dyn else addrs).setdefault(ln["ifname"], []).append(cidr)
    routes, routes6, static = [], [], []
    for family, table in ((4, _ip_json("-4", "route", "show")),
                          (6, _ip_json("-6", "route", "show"))):
        for r in table:
            if r.get("dst") == "default":
                (routes if family == 4 else routes6).append(
                    {"gateway": r.get("gateway"), "dev": r.get("dev")})
            elif r.get("protocol") not in NOT_STATIC and r.get("type", "unicast") == "unicast" \
                    and not str(r.get("dst", "")).startswith(("fe80:", "ff00:")):
                static.append(_route(r, family))
    return {"links": links, "addrs": addrs, "slaac": slaac, "routes": routes,
            "routes6": routes6, "static_routes": static}


def _write(path, text, mode):
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.kvmcluster-new"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _put(path, text, mode):
    if text is None:
        if os.path.lexists(path):
            os.unlink(path)
    else:
        _write(path, text, mode)


class Txn:
    """One transaction directory: spec (what and how), phase (where it is), log."""

    def __init__(self, path):
        self.path = path
        self.id = os.path.basename(path)

    @property
    def spec(self):
        with open(os.path.join(self.path, "spec.json"), encoding="utf-8") as fh:
            return json.load(fh)

    def phase(self):
        try:
            with open(os.path.join(self.path, "phase.json"), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {"phase": "new", "detail": "", "time": 0}

    def set_phase(self, phase, detail="", **extra):
        data = {"phase": phase, "detail": detail, "time": time.time(), **extra}
        _write(os.path.join(self.path, "phase.json"), json.dumps(data), 0o600)
        self.log(f"{phase}: {detail}")

    def log(self, msg):
        with open(os.path.join(self.path, "log"), "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    def lock(self):
        fh = open(os.path.join(self.path, "lock"), "w", encoding="utf-8")  # noqa: SIM115
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh

    def unit(self, what):
        return f"{UNIT_PREFIX}-{what}-{self.id}"


def _txns():
    d = os.path.join(BASE, "txn")
    if not os.path.isdir(d):
        return []
    return [Txn(os.path.join(d, n)) for n in sorted(os.listdir(d))]


class Budget:
    """The time an apply has left: every step's timeout is cut to what remains."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, want):
        return max(1, min(want, int(self.end - time.monotonic())))

    def over(self):
        return time.monotonic() >= self.end


# ---- backends: how each one is brought up and back ---------------------------------------

def _flush(names, links):
    for n in names:
        if n in links:
            _run(["ip", "-4", "addr", "flush", "dev", n])
            _run(["ip", "-6", "addr", "flush", "dev", n, "scope", "global"])


def _write_files(spec, which):
    for path, f in sorted(spec["files"].items()):
        _put(path, f[which], f["mode"] if which == "new" else (f.get("old_mode") or f["mode"]))


def _owned(spec):
    """The bridge, the bond (when the port is one) and the NICs, each once, top down."""
    bond = [spec["port"]] if spec["port"] not in spec["nics"] else []
    return [spec["bridge"], *bond, *spec["nics"]], bond


def _netplan_touched(spec):
    return any(p.startswith("/etc/netplan/") for p in spec["files"])


def _activate(txn, spec, budget):
    """Bring the new configuration up; ``reload`` mode rewrites and reloads only."""
    b, br = spec["backend"], spec["bridge"]
    owned, bond = _owned(spec)
    links = runtime()["links"]
    if spec.get("mode") == "reload":
        _write_files(spec, "new")
        if b == "networkmanager":
            if _netplan_touched(spec):
                _run(["netplan", "generate"], timeout=budget.left(60))
            _run(["nmcli", "connection", "reload"], timeout=budget.left(60))
            rc, _, err = _run(["nmcli", "device", "reapply", br], timeout=budget.left(30))
            txn.log(f"nmcli device reapply {br}: rc={rc} {err.strip()[-300:]}")
        elif b == "netplan":
            _run(["netplan", "generate"], timeout=budget.left(60))
            rc, _, err = _run(["networkctl", "reload"], timeout=budget.left(60))
            txn.log(f"networkctl reload: rc={rc} {err.strip()[-300:]}")
        return
    if b == "ifupdown":
        for n in reversed(owned):
            if n in spec["before"]["ifupdown_up"]:
                txn.log(f"ifdown {n} (old configuration)")
                _run(["ifdown", "--force", n], timeout=budget.left(60))
        _write_files(spec, "new")
        _flush(owned, links)
        for n in [*bond, br]:
            rc, out, err = _run(["ifup", "--force", n], timeout=budget.left(90))
            txn.log(f"ifup {n}: rc={rc} {err.strip()[-300:]}")
    elif b == "networkmanager":
        _write_files(spec, "new")
        if _netplan_touched(spec):
            # Ubuntu: NM profiles stored by netplan live in /run, made by `netplan generate`.
            _run(["netplan", "generate"], timeout=budget.left(60))
        _run(["nmcli", "connection", "reload"], timeout=budget.left(60))
        _flush(owned, links)
        for n in owned:
            rc, out, err = _run(["nmcli", "--wait", str(budget.left(20)), "connection", "up",
                                 f"kvmcluster-{n}"], timeout=budget.left(40))
            txn.log(f"nmcli connection up kvmcluster-{n}: rc={rc} {err.strip()[-300:]}")
    elif b == "netplan":
        _write_files(spec, "new")
        rc, out, err = _run(["netplan", "generate"], timeout=budget.left(60))
        txn.log(f"netplan generate: rc={rc} {err.strip()[-300:]}")
        _flush(owned, links)
        _run(["systemctl", "enable", "--now", "systemd-networkd.service"],
             timeout=budget.left(60))
        _run(["networkctl", "reload"], timeout=budget.left(60))
        present = [n for n in owned if n in runtime()["links"]]
        rc, out, err = _run(["networkctl", "reconfigure", *present], timeout=budget.left(60))
        txn.log(f"networkctl reconfigure {' '.join(present)}: rc={rc} {err.strip()[-300:]}")
    elif b == "ifcfg":
        if spec["before"].get("nm_running") or spec["before"].get("nm_enabled"):
            _run(["systemctl", "disable", "--now", "NetworkManager.service"],
                 timeout=budget.left(60))
        _write_files(spec, "new")
        _flush(owned, links)
        rc, out, err = _run(["systemctl", "restart", "network.service"],
                            timeout=budget.left(120))
        txn.log(f"systemctl restart network: rc={rc} {err.strip()[-300:]}")
    else:
        raise CommandExecutionError(f"unknown backend {b}")
    _firewall_zone(txn, spec, to_bridge=True)


def _firewall_zone(txn, spec, to_bridge):
    """Where firewalld runs, the bridge takes the zone its port was in (and back)."""
    zone = spec["before"].get("zone")
    if not zone:
        return
    br, port = spec["bridge"], spec["port"]
    new, old = (br, port) if to_bridge else (port, br)
    for perm in ([], ["--permanent"]):
        _run(["firewall-cmd", *perm, f"--zone={zone}", f"--remove-interface={old}"])
        rc, _, err = _run(["firewall-cmd", *perm, f"--zone={zone}", f"--change-interface={new}"])
        txn.log(f"firewalld {' '.join(perm) or 'runtime'}: {new} in zone {zone}: rc={rc} "
                f"{err.strip()[-200:]}")


def _route_argv(r, dev=None):
    argv = ["ip", f"-{r['family']}", "route", "replace", r["dst"]]
    if r.get("gateway"):
        argv += ["via", r["gateway"]]
    argv += ["dev", dev or r["dev"]]
    if r.get("metric"):
        argv += ["metric", str(r["metric"])]
    return argv


def _restore(txn, spec):
    b, br, nics = spec["backend"], spec["bridge"], spec["nics"]
    owned, bond = _owned(spec)
    before = spec["before"]
    reload_only = spec.get("mode") == "reload"
    if b == "ifupdown" and not reload_only:
        for n in [br, *bond]:
            _run(["ifdown", "--force", n], timeout=60)
    _write_files(spec, "old")
    if b == "networkmanager":
        if _netplan_touched(spec):
            _run(["netplan", "generate"], timeout=60)
        _run(["nmcli", "connection", "reload"], timeout=60)
    elif b == "netplan":
        _run(["netplan", "generate"], timeout=60)
    if reload_only:
        if b == "networkmanager":
            _run(["nmcli", "device", "reapply", br], timeout=30)
        elif b == "netplan":
            _run(["networkctl", "reload"], timeout=60)
        return
    _firewall_zone(txn, spec, to_bridge=False)
    links = runtime()["links"]
    for dev in spec["created"]:
        if dev in links:
            txn.log(f"ip link del {dev}")
            _run(["ip", "link", "del", dev])
    links = runtime()["links"]
    for n in nics:
        if n in links and links[n]["master"] and links[n]["master"] != before["masters"].get(n):
            _run(["ip", "link", "set", n, "nomaster"])
    _flush([n for n in owned if n not in spec["created"]], links)
    # The backend takes its interfaces back first; then what it left out is put back by hand.
    if b == "ifupdown":
        for n in before["ifupdown_up"]:
            rc, _, err = _run(["ifup", "--force", n], timeout=90)
            txn.log(f"ifup {n}: rc={rc} {err.strip()[-200:]}")
    elif b == "networkmanager":
        # Profiles put back or rewritten are re-activated so NM applies their old settings.
        for cid in before.get("nm_reup", []) + before.get("nm_active", []):
            rc, _, err = _run(["nmcli", "--wait", "20", "connection", "up", "id", cid], timeout=40)
            txn.log(f"nmcli connection up {cid}: rc={rc} {err.strip()[-200:]}")
    elif b == "netplan":
        _run(["networkctl", "reload"], timeout=60)
        present = [n for n in owned if n in runtime()["links"]]
        _run(["networkctl", "reconfigure", *present], timeout=60)
    elif b == "ifcfg":
        _run(["systemctl", "restart", "network.service"], timeout=120)
        _nm_enablement_back(txn, before)
    now = runtime()
    for dev, addrs in before["addrs"].items():
        if dev not in now["links"]:
            continue
        _run(["ip", "link", "set", dev, "up"])
        for a in addrs:
            if a not in now["addrs"].get(dev, []):
                fam = "-6" if ":" in a else "-4"
                _run(["ip", fam, "addr", "add", a, "dev", dev])
    present = runtime()["links"]
    for r in before.get("static_routes", []):
        if r.get("dev") in present:
            _run(_route_argv(r))
    for fam, key in (("-4", "routes"), ("-6", "routes6")):
        for r in before.get(key, []):
            if r.get("gateway") and r.get("dev") in present:
                _run(["ip", fam, "route", "replace", "default", "via", r["gateway"],
                      "dev", r["dev"]])
    _drop_route_copies(txn, before)
    _libvirt_follows_bridge(txn, br)


def _drop_route_copies(txn, before, settle=2.0):
    """A backend brought back up (networkd, NetworkManager) may add a route of the old
    configuration again beside the one just restored (appended, or with a metric of its
    own), now or a moment later: keep exactly one copy of each route that was there before,
    the one with its old metric. Looked at twice, ``settle`` seconds apart."""
    for attempt in range(2):
        if attempt:
            time.sleep(settle)
        for r in before.get("static_routes", []):
            fam = f"-{r['family']}"
            rows = [x for x in _ip_json(fam, "route", "show", r["dst"])
                    if x.get("dst") == r["dst"] and x.get("dev") == r["dev"]
                    and x.get("gateway") == r.get("gateway")]
            if len(rows) < 2:
                continue
            want = r.get("metric") or 0
            rows.sort(key=lambda x: (x.get("metric") or 0) != want)
            for x in rows[1:]:
                argv = ["ip", fam, "route", "del", r["dst"]]
                if x.get("gateway"):
                    argv += ["via", x["gateway"]]
                argv += ["dev", x["dev"], "metric", str(x.get("metric") or 0)]
                if x.get("protocol"):
                    argv += ["proto", str(x["protocol"])]
                rc, _, err = _run(argv)
                txn.log(f"dropped a second copy of {r['dst']} on {x['dev']} (metric "
                        f"{x.get('metric') or 0}, proto {x.get('protocol')}): rc={rc} "
                        f"{err.strip()[-200:]}")


def _nm_enablement_back(txn, before, boot=False):
    """ifcfg on EL7/8 stops NetworkManager; a rollback gives it back as it was found (at
    boot without waiting: NetworkManager is ordered after the unit that runs this)."""
    if before.get("nm_enabled"):
        _run(["systemctl", "enable", "NetworkManager.service"], timeout=60)
        txn.log("NetworkManager enabled again")
    if before.get("nm_running"):
        _run(["systemctl", "start", *(["--no-block"] if boot else []),
              "NetworkManager.service"], timeout=60)
        txn.log("NetworkManager started again")


def _libvirt_follows_bridge(txn, bridge):
    """A libvirt network on a bridge that no longer exists is stopped and not autostarted."""
    if bridge in runtime()["links"]:
        return
    try:
        import libvirt  # pylint: disable=import-outside-toplevel
        from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel
    except ImportError:
        return
    # Runs apart from Salt's loader (the rollback timer): quiet as kvmcluster_virt.binding.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return
    try:
        for net in conn.listAllNetworks():
            el = ElementTree.fromstring(net.XMLDesc(0)).find("bridge")
            if el is None or el.get("name") != bridge:
                continue
            if net.isActive():
                net.destroy()
            if net.autostart():
                net.setAutostart(0)
            txn.log(f"libvirt network {net.name()} stopped: {bridge} is gone")
    except libvirt.libvirtError as exc:
        txn.log(f"libvirt network on {bridge}: {exc}")
    finally:
        conn.close()


# ---- the checks ---------------------------------------------------------------------------

def _neighbour(addr, dev):
    """The neighbour state of ``addr`` on ``dev`` (None when there is no entry)."""
    try:
        rows = _ip_json("neigh", "show", addr, "dev", dev)
    except (CommandExecutionError, ValueError):
        return None
    for r in rows:
        st = r.get("state") or []
        return st[0] if isinstance(st, list) and st else (st or None)
    return None


def _tcp_answer(src, dst, port, timeout=3.0):
    """Whether ``dst`` answers a TCP connect from ``src``: accepted or refused both count,
    a silent drop or no route does not."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if src and (":" in src) == (":" in dst):
            s.bind((src, 0))
        s.connect((dst, int(port)))
        return True, "accepted"
    except ConnectionRefusedError:
        return True, "refused (an answer)"
    except OSError as exc:
        return False, str(exc) or exc.__class__.__name__
    finally:
        s.close()


def _resolve_neighbour(src, addr, dev, tries=6):
    """Trigger neighbour resolution of ``addr`` (one UDP datagram to the discard port) and
    wait for it; True when the host answered at the link layer."""
    for _ in range(tries):
        st = _neighbour(addr, dev)
        if st in NEIGH_OK:
            return True
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            try:
                if src and (":" in src) == (":" in addr):
                    s.bind((src, 0))
                s.sendto(b"", (addr, 9))
            except OSError:
                pass
        time.sleep(0.5)
    return _neighbour(addr, dev) in NEIGH_OK


def _gateway_answers(spec):
    gw, br = spec.get("gateway"), spec["bridge"]
    how = (spec.get("check") or {}).get("gateway", "arp")
    if not gw or how == "none":
        return True, ""
    if how == "icmp":
        if shutil.which("ping") is None:
            return False, "check:gateway is icmp but ping is not installed"
        ok = _run(["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", br, gw], timeout=5)[0] == 0
        return ok, f"gateway {gw} " + ("answers ICMP echo" if ok else f"does not answer on {br}")
    ok = _resolve_neighbour(spec.get("ip"), gw, br)
    return ok, f"gateway {gw} " + ("resolves (ARP/ND)" if ok else f"does not answer on {br}")


def _check(spec, timeout=CHECK_TIMEOUT):
    """Local check: the bridge holds the addresses and routes, the port none, the gateway
    answers."""
    deadline = time.monotonic() + timeout
    reason = "not checked"
    br = spec["bridge"]
    port_devs = spec["nics"] + [spec["port"]]
    want = [spec["address"], *spec.get("address6", [])]
    for _ in range(int(timeout * 2) + 1):
        rt = runtime()
        held = rt["addrs"].get(br, [])
        lacking = [a for a in want if a not in held]
        left = {n: rt["addrs"][n] for n in port_devs if rt["addrs"].get(n)}
        routes = {(r["dst"], r.get("gateway")) for r in rt["static_routes"] if r["dev"] == br}
        lost = [r["dst"] for r in spec.get("routes_moved", [])
                if (r["dst"], r.get("gateway")) not in routes]
        if lacking:
            reason = f"{br} does not hold {', '.join(lacking)}"
        elif left:
            reason = f"addresses left on the port: {left}"
        elif spec.get("gateway") and not any(r["gateway"] == spec["gateway"] and r["dev"] == br
                                             for r in rt["routes"]):
            reason = f"no default route via {spec['gateway']} on {br}"
        elif spec.get("gateway6") and not any(
                r["gateway"] == spec["gateway6"] and r["dev"] == br for r in rt["routes6"]):
            reason = f"no IPv6 default route via {spec['gateway6']} on {br}"
        elif lost:
            reason = f"routes not on {br}: {', '.join(lost)}"
        else:
            ok, detail = _gateway_answers(spec)
            if ok:
                return True, f"{br} holds {', '.join(want)}" + (f", {detail}" if detail else "")
            reason = detail
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return False, reason


def _peer_proof(spec):
    """Whether the management peer answers over the new path: neighbour resolution (of the
    peer on-link, else of the gateway) and a TCP answer from the peer to our address."""
    peer = spec.get("peer") or {}
    addr, port, br = peer.get("address"), peer.get("port"), spec["bridge"]
    if not addr or not port:
        return False, "no management peer known"
    try:
        on_link = ipaddress.ip_address(addr) in ipaddress.ip_interface(spec["address"]).network
    except ValueError:
        on_link = False
    hop = addr if on_link else spec.get("gateway")
    if hop and not _resolve_neighbour(spec.get("ip"), hop, br):
        return False, f"{hop} does not resolve on {br}"
    ok, how = _tcp_answer(spec.get("ip"), addr, port)
    if not ok:
        return False, f"management peer {addr}:{port} does not answer over {br}: {how}"
    return True, (f"management peer {addr} answers over {br} "
                  f"({'ARP/ND' if on_link else f'via {hop}'}, TCP {port} {how})")


# ---- the transaction steps (run by systemd) -----------------------------------------------

def _start_timer(txn, what, seconds, reason):
    """A transient timer that runs the rollback; False when systemd did not take it."""
    rc, _, err = _run(["systemd-run", f"--unit={txn.unit(what)}", "--collect",
                       f"--on-active={int(seconds)}", "--timer-property=AccuracySec=1s",
                       "--description=kvmcluster network rollback (dead-man switch)",
                       _python(), _script(), "rollback", txn.path, reason], timeout=30)
    if rc:
        txn.log(f"timer {what} not started: {err.strip()[-200:]}")
    return rc == 0


def _stop_timers(txn):
    for what in ("guard", "rollback"):
        _run(["systemctl", "stop", f"{txn.unit(what)}.timer"], timeout=30)


def _do_apply(path):
    txn = Txn(path)
    spec = txn.spec
    budget = Budget(spec["rollback_after"])
    with txn.lock():
        if txn.phase()["phase"] != "armed":
            txn.log(f"apply skipped in phase {txn.phase()['phase']}")
            return 1
        txn.set_phase("applying")
        try:
            _activate(txn, spec, budget)
            ok, detail = _check(spec, timeout=budget.left(CHECK_TIMEOUT))
            if ok and budget.over():
                ok, detail = False, (f"the apply took longer than network:rollback_timeout "
                                     f"({spec['rollback_after']}s)")
        except Exception as exc:  # pylint: disable=broad-except
            ok, detail = False, f"apply failed: {exc}"
        if not ok:
            txn.set_phase("rolling-back", f"local check failed: {detail}")
            _stop_timers(txn)
            _safe_restore(txn, spec)
            txn.set_phase("rolled-back", f"local check failed: {detail}")
            return 2
        if spec.get("confirm") == "auto":
            proved, how = _peer_proof(spec)
            if proved:
                _stop_timers(txn)
                txn.set_phase("confirmed", f"confirmed by the node itself: {detail}; {how}",
                              by="node")
                return 0
            detail = f"{detail}; not confirmed by the node itself: {how}"
        # The confirmation window counts from here, the end of this node's local check.
        after = spec["rollback_after"]
        reason = f"no confirmation from the management node within {after}s"
        if _start_timer(txn, "rollback", after, reason):
            _run(["systemctl", "stop", f"{txn.unit('guard')}.timer"], timeout=30)
        txn.set_phase("applied", detail, deadline=time.time() + after)
        return 0


def _do_rollback(path, reason):
    txn = Txn(path)
    spec = txn.spec
    with txn.lock():
        ph = txn.phase()["phase"]
        if ph in FINAL:
            txn.log(f"rollback skipped in phase {ph}")
            return 0
        txn.set_phase("rolling-back", reason)
        _stop_timers(txn)
        _safe_restore(txn, spec)
        txn.set_phase("rolled-back", reason)
    return 0


def _do_boot():
    """At boot, before the network: every unconfirmed transaction gets its old files back.
    Nothing is up yet, so only files (and what reads them early) need restoring."""
    for t in _txns():
        ph = t.phase()["phase"]
        if ph in FINAL:
            continue
        with t.lock():
            spec = t.spec
            reason = (f"rolled back at boot: the node restarted while the transaction was "
                      f"{ph}, before any confirmation")
            t.set_phase("rolling-back", reason)
            try:
                _write_files(spec, "old")
                if spec["backend"] == "netplan" or _netplan_touched(spec):
                    _run(["netplan", "generate"], timeout=60)
                if spec["backend"] == "ifcfg":
                    _nm_enablement_back(t, spec["before"], boot=True)
            except Exception as exc:  # pylint: disable=broad-except
                t.log(f"restore error at boot: {exc}")
            t.set_phase("rolled-back", reason, at_boot=True)
    return 0


def _safe_restore(txn, spec):
    try:
        _restore(txn, spec)
    except Exception as exc:  # pylint: disable=broad-except
        txn.log(f"restore error: {exc}")


def _main(argv):
    if len(argv) >= 2 and argv[0] == "apply":
        return _do_apply(argv[1])
    if len(argv) >= 2 and argv[0] == "rollback":
        return _do_rollback(argv[1], argv[2] if len(argv) > 2 else "rollback requested")
    if argv[:1] == ["boot"]:
        return _do_boot()
    print("usage: kvmcluster-nettxn.py apply DIR | rollback DIR [REASON] | boot",
          file=sys.stderr)
    return 64


# ---- execution functions --------------------------------------------------------------------

def _systemd_running():
    return shutil.which("systemd-run") is not None and os.path.isdir("/run/systemd/system")


def _python():
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _script():
    return os.path.join(BASE, SCRIPT_NAME)


def _install_script():
    """This file, as the script the units run (kept current on every transaction)."""
    src = __file__ if __file__.endswith(".py") else __file__[:-1]
    os.makedirs(BASE, mode=0o700, exist_ok=True)
    with open(src, encoding="utf-8") as fh:
        text = fh.read()
    if _read(_script()) != text:
        _write(_script(), text, 0o700)


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def boot_unit_text():
    """
    The unit that rolls back, at boot, a transaction the node did not live to confirm.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.boot_unit_text
    """
    return (
        "# Managed by kvmcluster (Salt).\n"
        "[Unit]\n"
        "Description=kvmcluster: roll back an unconfirmed network change before the network\n"
        "DefaultDependencies=no\n"
        "After=local-fs.target\n"
        "Before=network-pre.target networking.service NetworkManager.service "
        "systemd-networkd.service network.service shutdown.target\n"
        "Wants=network-pre.target\n"
        "Conflicts=shutdown.target\n"
        f"ConditionPathExists={_script()}\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={_python()} {_script()} boot\n\n"
        "[Install]\n"
        "WantedBy=sysinit.target\n")


def boot_guard(install=False):
    """
    Whether the boot-time rollback unit is installed and enabled (``install=True``: make it
    so). Returns ``{"installed": bool, "enabled": bool}``.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.boot_guard install=True
    """
    def state():
        enabled = _run(["systemctl", "is-enabled", "--quiet", BOOT_UNIT], timeout=30)[0] == 0
        return {"installed": _read(BOOT_UNIT_PATH) == boot_unit_text()
                and _read(_script()) is not None, "enabled": enabled}

    st = state()
    if install and not (st["installed"] and st["enabled"]):
        _install_script()
        _write(BOOT_UNIT_PATH, boot_unit_text(), 0o644)
        _run(["systemctl", "daemon-reload"], timeout=60, check=True)
        _run(["systemctl", "enable", BOOT_UNIT], timeout=60, check=True)
        st = state()
    return st


def _prune():
    done = [t for t in _txns() if t.phase()["phase"] in FINAL]
    for t in done[:-KEEP]:
        shutil.rmtree(t.path, ignore_errors=True)


def _unit_active(name):
    return _run(["systemctl", "is-active", "--quiet", name], timeout=30)[0] == 0


def _reap_stale(now=None):
    """Roll back a transaction that nothing will finish any more: no apply running and no
    timer armed (lost to a crash or a manual stop), past its deadline."""
    now = now or time.time()
    for t in _txns():
        ph = t.phase()
        if ph["phase"] in FINAL:
            continue
        spec = t.spec
        limit = ph.get("deadline") or (ph.get("time", 0) + 2 * spec["rollback_after"] + 30)
        if now < limit + 15:
            continue
        if any(_unit_active(f"{t.unit(w)}.{k}") for w, k in
               (("apply", "service"), ("guard", "timer"), ("rollback", "timer"))):
            continue
        _do_rollback(t.path, f"expired: {ph['phase']} since "
                             f"{time.strftime('%H:%M:%S', time.localtime(ph.get('time', 0)))} "
                             "with no rollback timer left; rolled back when found")


def begin(spec, wait=True, delay=0):
    """
    Start a transaction from ``spec`` (built by ``kvmcluster_network``): save, arm, apply,
    check, confirm locally when the management peer answers. Returns the transaction's phase
    when the apply unit ends (``confirmed``, ``applied`` or ``rolled-back``).

    delay
        Seconds before the apply starts, with ``wait=False``: when the change moves the
        management session's own address, the run reports back before the session is cut.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.begin '{...}'
    """
    if not _systemd_running():
        raise CommandExecutionError("the network dead-man switch needs systemd running "
                                    "(systemd-run); nothing was changed")
    if not all(boot_guard().values()):
        raise CommandExecutionError(f"the boot-time rollback ({BOOT_UNIT}) is not installed; "
                                    "run the kvmcluster.network states; nothing was changed")
    _reap_stale()
    for t in _txns():
        if t.phase()["phase"] not in FINAL:
            raise CommandExecutionError(
                f"network transaction {t.id} is still {t.phase()['phase']}; confirm it "
                "(kvmcluster_network.confirm) or wait for its rollback")
    _install_script()
    # Sortable by start: the second, its milliseconds, then a random tag.
    now = time.time()
    tid = (time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
           + f"{int(now * 1000) % 1000:03d}-{secrets.token_hex(2)}")
    path = os.path.join(BASE, "txn", tid)
    os.makedirs(path, mode=0o700)
    txn = Txn(path)
    # Keep a copy of every file that is replaced or removed, beyond the transaction's life.
    for fpath, f in spec["files"].items():
        if f["old"] is not None and f["old"] != f["new"]:
            keep = os.path.join(BASE, "replaced", tid, fpath.lstrip("/"))
            _write(keep, f["old"], 0o600)
    _write(os.path.join(path, "spec.json"), json.dumps(spec, indent=1, sort_keys=True), 0o600)
    after = int(spec["rollback_after"])
    delay = int(delay) if not wait else 0
    # The guard covers the apply itself (bounded by rollback_after) and the window after it.
    guard = delay + 2 * after + 15
    txn.set_phase("armed", f"guard timer {guard}s; the confirmation window of {after}s "
                           "starts when the local check passes")
    if not _start_timer(txn, "guard", guard, f"the apply and confirmation did not end "
                                              f"within {guard}s"):
        txn.set_phase("failed", "the guard timer could not be armed; nothing was changed")
        raise CommandExecutionError("the rollback timer could not be armed; nothing was changed")
    argv = ["systemd-run", f"--unit={txn.unit('apply')}", "--collect",
            "--description=kvmcluster network apply", "--property=KillMode=process"]
    if wait:
        argv.insert(1, "--wait")
    elif delay:
        # systemd's timers fire up to a minute late unless told otherwise.
        argv[1:1] = [f"--on-active={delay}", "--timer-property=AccuracySec=1s"]
    argv += [_python(), _script(), "apply", path]
    _run(argv, timeout=after + 60)
    # The unit goes on if this process is interrupted; the phase file is the truth.
    deadline = time.monotonic() + after + 60
    for _ in range(2 * (after + 60)):
        ph = txn.phase()
        if ph["phase"] not in ("armed", "applying") or not wait or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _prune()
    return dict(txn.phase(), id=tid)


def pending(reap=True):
    """
    The transaction waiting for confirmation, if any (``None`` otherwise). A transaction
    whose timer was lost is rolled back here, past its deadline (not with ``reap=False``,
    as under ``test=True``).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.pending
    """
    if reap:
        _reap_stale()
    for t in reversed(_txns()):
        ph = t.phase()
        if ph["phase"] not in FINAL:
            return dict(ph, id=t.id, deadline=ph.get("deadline"))
    return None


def confirm(txn=None):
    """
    Confirm the pending network transaction: disarm its rollback timers and keep the new
    configuration. Run it from the management node over a new connection after
    ``state.apply``: that the call arrives is the proof that the node is reachable.

    CLI Example:

    .. code-block:: bash

        salt-ssh '*' kvmcluster_nettxn.confirm
    """
    cands = [t for t in _txns() if txn in (None, t.id)]
    if txn is not None and not cands:
        raise CommandExecutionError(f"no network transaction {txn}")
    open_ = [t for t in cands if t.phase()["phase"] not in FINAL]
    if not open_:
        if txn is None:
            last = cands[-1] if cands else None
            if last and last.phase()["phase"] == "rolled-back" and \
                    time.time() - last.phase()["time"] < 3600:
                __context__["retcode"] = 1
                return {"confirmed": False, "id": last.id, "phase": "rolled-back",
                        "comment": f"transaction {last.id} was rolled back: "
                                   f"{last.phase()['detail']}"}
            if last and last.phase()["phase"] == "confirmed":
                return {"confirmed": True, "id": last.id, "phase": "confirmed",
                        "comment": f"nothing to confirm; transaction {last.id}: "
                                   f"{last.phase()['detail']}"}
            return {"confirmed": False, "id": None, "comment": "nothing to confirm"}
        ph = cands[0].phase()
        __context__["retcode"] = int(ph["phase"] != "confirmed")
        return {"confirmed": ph["phase"] == "confirmed", "id": txn, "phase": ph["phase"],
                "comment": ph["detail"]}
    t = open_[-1]
    with t.lock():
        ph = t.phase()
        if ph["phase"] != "applied":
            __context__["retcode"] = 1
            return {"confirmed": False, "id": t.id, "phase": ph["phase"],
                    "comment": f"transaction {t.id} is {ph['phase']}: {ph['detail']}"}
        _stop_timers(t)
        t.set_phase("confirmed", "confirmed by the management node", by="management")
    _prune()
    return {"confirmed": True, "id": t.id, "phase": "confirmed",
            "comment": f"transaction {t.id} confirmed; rollback timer disarmed"}


def rollback(txn=None):
    """
    Roll the pending network transaction back now instead of waiting for its timer.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.rollback
    """
    p = pending()
    if p is None or (txn and p["id"] != txn):
        raise CommandExecutionError("no pending network transaction" + (f" {txn}" if txn else ""))
    t = Txn(os.path.join(BASE, "txn", p["id"]))
    _do_rollback(t.path, "rolled back on request")
    return dict(t.phase(), id=t.id)


def history(count=5):
    """
    The last ``count`` transactions with their phase and log.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.history
    """
    out = []
    for t in _txns()[-int(count):]:
        out.append(dict(t.phase(), id=t.id, log=(_read(os.path.join(t.path, "log")) or "")
                        .splitlines()))
    return out


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
