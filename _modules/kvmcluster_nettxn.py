"""
Network transactions with a dead-man switch.

A transaction saves the files it rewrites and the runtime state of the interfaces it takes
over, arms a timer that restores both after ``rollback_after`` seconds, applies the new
configuration and checks it locally. Only a confirmation from the management node (a new
connection calling ``kvmcluster_nettxn.confirm``) disarms the timer.

The apply and the rollback run as transient systemd units, not in the caller's session: a
killed SSH session neither stops an apply half-way nor cancels the rollback. For that this
file is also a standalone script (standard library only), copied into each transaction.
"""
import fcntl
import json
import os
import secrets
import shutil
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
CHECK_TIMEOUT = 30
FINAL = ("confirmed", "rolled-back", "failed")
KEEP = 10


def __virtual__():
    return __virtualname__


# ---- small helpers (no Salt) --------------------------------------------------------------

def _run(argv, timeout=60, check=False):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
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


def runtime():
    """
    Links, IPv4 addresses and default routes, as ``ip -j`` reports them.

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
    addrs = {}
    for ln in _ip_json("-4", "addr", "show"):
        addrs[ln["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in ln.get("addr_info", [])
                               if a.get("family") == "inet"]
    routes = [{"gateway": r.get("gateway"), "dev": r.get("dev")}
              for r in _ip_json("-4", "route", "show", "default")]
    return {"links": links, "addrs": addrs, "routes": routes}


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

    def set_phase(self, phase, detail=""):
        data = {"phase": phase, "detail": detail, "time": time.time()}
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


# ---- backends: how each one is brought up and back ---------------------------------------

def _flush(names, links):
    for n in names:
        if n in links:
            _run(["ip", "-4", "addr", "flush", "dev", n])


def _write_files(spec, which):
    for path, f in sorted(spec["files"].items()):
        _put(path, f[which], f["mode"] if which == "new" else (f.get("old_mode") or f["mode"]))


def _owned(spec):
    """The bridge, the bond (when the port is one) and the NICs, each once, top down."""
    bond = [spec["port"]] if spec["port"] not in spec["nics"] else []
    return [spec["bridge"], *bond, *spec["nics"]], bond


def _activate(txn, spec):
    b, br = spec["backend"], spec["bridge"]
    owned, bond = _owned(spec)
    links = runtime()["links"]
    if b == "ifupdown":
        for n in reversed(owned):
            if n in spec["before"]["ifupdown_up"]:
                txn.log(f"ifdown {n} (old configuration)")
                _run(["ifdown", "--force", n], timeout=60)
        _write_files(spec, "new")
        _flush(owned, links)
        ups = [*bond, br]
        for n in ups:
            rc, out, err = _run(["ifup", "--force", n], timeout=90)
            txn.log(f"ifup {n}: rc={rc} {err.strip()[-300:]}")
    elif b == "networkmanager":
        _write_files(spec, "new")
        _run(["nmcli", "connection", "reload"], timeout=60)
        _flush(owned, links)
        for n in owned:
            rc, out, err = _run(["nmcli", "--wait", "20", "connection", "up",
                                 f"kvmcluster-{n}"], timeout=40)
            txn.log(f"nmcli connection up kvmcluster-{n}: rc={rc} {err.strip()[-300:]}")
    elif b == "netplan":
        _write_files(spec, "new")
        rc, out, err = _run(["netplan", "generate"], timeout=60)
        txn.log(f"netplan generate: rc={rc} {err.strip()[-300:]}")
        _flush(owned, links)
        _run(["systemctl", "enable", "--now", "systemd-networkd.service"], timeout=60)
        _run(["networkctl", "reload"], timeout=60)
        present = [n for n in owned if n in runtime()["links"]]
        rc, out, err = _run(["networkctl", "reconfigure", *present], timeout=60)
        txn.log(f"networkctl reconfigure {' '.join(present)}: rc={rc} {err.strip()[-300:]}")
    elif b == "ifcfg":
        rc, _, _ = _run(["systemctl", "is-active", "--quiet", "NetworkManager.service"])
        if rc == 0:
            _run(["systemctl", "disable", "--now", "NetworkManager.service"], timeout=60)
        _write_files(spec, "new")
        _flush(owned, links)
        rc, out, err = _run(["systemctl", "restart", "network.service"], timeout=120)
        txn.log(f"systemctl restart network: rc={rc} {err.strip()[-300:]}")
    else:
        raise CommandExecutionError(f"unknown backend {b}")


def _restore(txn, spec):
    b, br, nics = spec["backend"], spec["bridge"], spec["nics"]
    owned, bond = _owned(spec)
    before = spec["before"]
    if b == "ifupdown":
        for n in [br, *bond]:
            _run(["ifdown", "--force", n], timeout=60)
    _write_files(spec, "old")
    if b == "networkmanager":
        _run(["nmcli", "connection", "reload"], timeout=60)
    elif b == "netplan":
        _run(["netplan", "generate"], timeout=60)
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
    now = runtime()
    for dev, addrs in before["addrs"].items():
        if dev not in now["links"]:
            continue
        _run(["ip", "link", "set", dev, "up"])
        for a in addrs:
            if a not in now["addrs"].get(dev, []):
                _run(["ip", "addr", "add", a, "dev", dev])
    for r in before["routes"]:
        if r.get("gateway") and r.get("dev") in runtime()["links"]:
            _run(["ip", "route", "replace", "default", "via", r["gateway"], "dev", r["dev"]])


def _check(spec, timeout=CHECK_TIMEOUT):
    """Local check: the bridge holds the address, the NICs none, the gateway answers."""
    deadline = time.monotonic() + timeout
    reason = "not checked"
    for _ in range(int(timeout * 2) + 1):
        rt = runtime()
        br = spec["bridge"]
        if spec["address"] not in rt["addrs"].get(br, []):
            reason = f"{br} does not hold {spec['address']}"
        elif any(rt["addrs"].get(n) for n in spec["nics"] + [spec["port"]]):
            left = {n: rt["addrs"][n] for n in spec["nics"] + [spec["port"]] if rt["addrs"].get(n)}
            reason = f"addresses left on the port: {left}"
        elif spec.get("gateway") and not any(r["gateway"] == spec["gateway"] and r["dev"] == br
                                             for r in rt["routes"]):
            reason = f"no default route via {spec['gateway']} on {br}"
        elif spec.get("gateway") and shutil.which("ping") and _run(
                ["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", br, spec["gateway"]],
                timeout=5)[0] != 0:
            reason = f"gateway {spec['gateway']} does not answer on {br}"
        else:
            return True, f"{br} holds {spec['address']}" + (
                f", gateway {spec['gateway']} answers" if spec.get("gateway") else "")
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return False, reason


# ---- the transaction steps (run by systemd) -----------------------------------------------

def _do_apply(path):
    txn = Txn(path)
    spec = txn.spec
    with txn.lock():
        if txn.phase()["phase"] != "armed":
            txn.log(f"apply skipped in phase {txn.phase()['phase']}")
            return 1
        txn.set_phase("applying")
        try:
            _activate(txn, spec)
            ok, detail = _check(spec)
        except Exception as exc:  # pylint: disable=broad-except
            ok, detail = False, f"apply failed: {exc}"
        if ok:
            txn.set_phase("applied", detail)
            return 0
        txn.set_phase("rolling-back", f"local check failed: {detail}")
        _stop_timer(txn)
        _safe_restore(txn, spec)
        txn.set_phase("rolled-back", f"local check failed: {detail}")
        return 2


def _do_rollback(path, reason):
    txn = Txn(path)
    spec = txn.spec
    with txn.lock():
        ph = txn.phase()["phase"]
        if ph in FINAL:
            txn.log(f"rollback skipped in phase {ph}")
            return 0
        txn.set_phase("rolling-back", reason)
        _safe_restore(txn, spec)
        txn.set_phase("rolled-back", reason)
    return 0


def _safe_restore(txn, spec):
    try:
        _restore(txn, spec)
    except Exception as exc:  # pylint: disable=broad-except
        txn.log(f"restore error: {exc}")


def _stop_timer(txn):
    _run(["systemctl", "stop", f"{txn.unit('rollback')}.timer"], timeout=30)


def _main(argv):
    if len(argv) >= 2 and argv[0] == "apply":
        return _do_apply(argv[1])
    if len(argv) >= 2 and argv[0] == "rollback":
        return _do_rollback(argv[1], argv[2] if len(argv) > 2 else "rollback requested")
    print("usage: txn.py apply DIR | rollback DIR [REASON]", file=sys.stderr)
    return 64


# ---- execution functions --------------------------------------------------------------------

def _python():
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _prune():
    done = [t for t in _txns() if t.phase()["phase"] in FINAL]
    for t in done[:-KEEP]:
        shutil.rmtree(t.path, ignore_errors=True)


def begin(spec, wait=True):
    """
    Start a transaction from ``spec`` (built by ``kvmcluster_network``): save, arm, apply,
    check. Returns the transaction's phase when the apply unit ends (``applied`` or
    ``rolled-back``).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.begin '{...}'
    """
    if shutil.which("systemd-run") is None or not os.path.isdir("/run/systemd/system"):
        raise CommandExecutionError("the network dead-man switch needs systemd running "
                                    "(systemd-run); nothing was changed")
    for t in _txns():
        if t.phase()["phase"] not in FINAL:
            raise CommandExecutionError(
                f"network transaction {t.id} is still {t.phase()['phase']}; confirm it "
                "(kvmcluster_nettxn.confirm) or wait for its rollback")
    tid = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    path = os.path.join(BASE, "txn", tid)
    os.makedirs(path, mode=0o700)
    txn = Txn(path)
    # Keep a copy of every file that is replaced or removed, beyond the transaction's life.
    for fpath, f in spec["files"].items():
        if f["old"] is not None and f["old"] != f["new"]:
            keep = os.path.join(BASE, "replaced", tid, fpath.lstrip("/"))
            _write(keep, f["old"], 0o600)
    _write(os.path.join(path, "spec.json"), json.dumps(spec, indent=1, sort_keys=True), 0o600)
    shutil.copyfile(__file__ if __file__.endswith(".py") else __file__[:-1],
                    os.path.join(path, "txn.py"))
    txn.set_phase("armed", f"rollback in {spec['rollback_after']}s unless confirmed")
    script = os.path.join(path, "txn.py")
    _run(["systemd-run", f"--unit={txn.unit('rollback')}", "--collect",
          f"--on-active={int(spec['rollback_after'])}", "--timer-property=AccuracySec=1s",
          "--description=kvmcluster network rollback (dead-man switch)",
          _python(), script, "rollback", path,
          f"no confirmation from the management node within {spec['rollback_after']}s"],
         check=True)
    argv = ["systemd-run", f"--unit={txn.unit('apply')}", "--collect",
            "--description=kvmcluster network apply", "--property=KillMode=process"]
    if wait:
        argv.insert(1, "--wait")
    argv += [_python(), script, "apply", path]
    _run(argv, timeout=300)
    # The unit goes on if this process is interrupted; the phase file is the truth.
    deadline = time.monotonic() + 300
    for _ in range(600):
        ph = txn.phase()
        if ph["phase"] not in ("armed", "applying") or not wait or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _prune()
    return dict(txn.phase(), id=tid)


def pending():
    """
    The transaction waiting for confirmation, if any (``None`` otherwise).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_nettxn.pending
    """
    for t in reversed(_txns()):
        ph = t.phase()
        if ph["phase"] not in FINAL:
            return dict(ph, id=t.id, deadline=t.spec.get("deadline"))
    return None


def confirm(txn=None):
    """
    Confirm the pending network transaction: disarm its rollback timer and keep the new
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
        _stop_timer(t)
        t.set_phase("confirmed", "confirmed by the management node")
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
    _stop_timer(t)
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
        try:
            with open(os.path.join(t.path, "log"), encoding="utf-8") as fh:
                log = fh.read().splitlines()
        except OSError:
            log = []
        out.append(dict(t.phase(), id=t.id, log=log))
    return out


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
