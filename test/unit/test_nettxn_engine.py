"""The network transaction engine against a simulated host: apply, check, self-confirmation,
the confirmation window, restore, boot-time rollback and stale transactions.

The host is a small model of what the engine reads and changes (links, addresses, routes,
neighbours, systemd timers, files in a temporary directory); every command the engine runs
goes through it. Nothing here touches the machine's network: sockets are replaced too."""
import json
import os

import pytest

from kvmtestlib import load_module

GW, GW6 = "172.30.10.1", "fd00:30:10::1"
IP, IP6 = "172.30.10.41", "fd00:30:10::41"
PEER = "172.30.10.11"
MAC = "52:54:00:30:01:00"
OLD_IFACES = ("auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n"
              f"    address {IP}/24\n    gateway {GW}\n")
NEW_IFACES = "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"
NEW_OURS = f"auto br0\niface br0 inet static\n    address {IP}/24\n    bridge_ports eth0\n"
NM_OLD = "/etc/NetworkManager/system-connections/lab-eth0.nmconnection"
NM_OURS = "/etc/NetworkManager/system-connections/kvmcluster-br0.nmconnection"
NETPLAN_OLD = "/etc/netplan/50-lab.yaml"
NETPLAN_OURS = "/etc/netplan/60-kvmcluster.yaml"
ROUTE = {"family": 4, "dst": "10.99.0.0/24", "gateway": GW, "dev": "eth0", "metric": None}


class Host:
    """What the engine sees of a node: it changes only through the commands it runs."""

    def __init__(self, root, tx):
        self.root, self.tx = root, tx
        self.links = {"lo": {"kind": None, "master": None, "up": True},
                      "eth0": {"kind": None, "master": None, "up": True}}
        self.addrs = {"lo": ["127.0.0.1/8"], "eth0": [f"{IP}/24", f"{IP6}/64"]}
        self.routes = [{"family": 4, "dst": "default", "gateway": GW, "dev": "eth0"},
                       {"family": 6, "dst": "default", "gateway": GW6, "dev": "eth0"},
                       dict(ROUTE, protocol=None)]
        self.timers = {}   # unit -> (seconds, argv)
        self.enabled = set()
        self.cmds = []
        self.gateway_alive = True   # answers ARP
        self.peer_answers = True    # answers TCP
        self.bridge_gets_address = True
        self.services = {"NetworkManager.service"}
        self.gateway_echo = True    # answers ICMP echo
        self.firewall = []

    def path(self, p):
        return str(self.root / p.lstrip("/"))

    # -- what `ip -j` prints
    def _link_rows(self):
        return [{"ifname": n, "address": MAC, "mtu": 1500, "master": ln["master"],
                 "flags": ["UP"] if ln["up"] else [],
                 "linkinfo": {"info_kind": ln["kind"]} if ln["kind"] else {}}
                for n, ln in self.links.items()]

    def _addr_rows(self):
        rows = []
        for n in self.links:
            info = []
            for a in self.addrs.get(n, []):
                ip, plen = a.split("/")
                info.append({"family": "inet6" if ":" in ip else "inet", "local": ip,
                             "prefixlen": int(plen), "scope": "global"})
            rows.append({"ifname": n, "addr_info": info})
        return rows

    def _route_rows(self, family):
        out = []
        for r in self.routes:
            if r["family"] == family and r["dev"] in self.links:
                row = {"dst": r["dst"], "dev": r["dev"]}
                if r.get("gateway"):
                    row["gateway"] = r["gateway"]
                if r.get("metric"):
                    row["metric"] = r["metric"]
                out.append(row)
        return out

    def _on_link(self, addr):
        """The device holding an address in addr's subnet (/24 or /64 here)."""
        for dev, al in self.addrs.items():
            for a in al:
                if (":" in a) == (":" in addr) and a.rsplit(".", 1)[0] == addr.rsplit(".", 1)[0]:
                    return dev
        return None

    # -- the command dispatcher
    def run(self, argv, timeout=60, check=False):  # noqa: C901 - a dispatcher
        argv = [str(a) for a in argv]
        self.cmds.append(argv)
        ok = (0, "", "")
        if argv[:2] == ["ip", "-j"]:
            args = argv[2:]
            if args[:3] == ["-d", "link", "show"]:
                return 0, json.dumps(self._link_rows()), ""
            if args[:2] == ["addr", "show"]:
                return 0, json.dumps(self._addr_rows()), ""
            if args[1:3] == ["route", "show"]:
                return 0, json.dumps(self._route_rows(int(args[0][1]))), ""
            if args[:2] == ["neigh", "show"]:
                addr, dev = args[2], args[4]
                alive = (self.gateway_alive if addr == GW else self.peer_answers)
                if alive and self._on_link(addr) == dev:
                    return 0, json.dumps([{"dst": addr, "state": ["REACHABLE"]}]), ""
                return 0, "[]", ""
            raise AssertionError(f"unexpected ip -j {args}")
        if argv[0] == "ip":
            return self._ip(argv[1:])
        if argv[:2] == ["ifdown", "--force"]:
            self._down(argv[-1])
            return ok
        if argv[:2] == ["ifup", "--force"]:
            self._up(argv[-1])
            return ok
        if argv[0] == "nmcli":
            return self._nmcli(argv[1:])
        if argv in (["netplan", "generate"], ["networkctl", "reload"]):
            return ok
        if argv[:2] == ["networkctl", "reconfigure"]:
            if self._read(NETPLAN_OURS):
                self._up("br0", ours=True)
            elif self._read(NETPLAN_OLD):
                self._up("eth0", old=True)
            return ok
        if argv[0] == "systemd-run":
            unit = next(a.split("=", 1)[1] for a in argv if a.startswith("--unit="))
            rest = argv[argv.index(next(a for a in argv if a.endswith(".py"))) - 1:]
            active = next((a for a in argv if a.startswith("--on-active=")), None)
            if active:
                self.timers[unit] = (int(active.split("=")[1]), rest)
                return ok
            # the apply unit: run it here, to its end, as systemd would
            self.tx._do_apply(rest[3])
            return ok
        if argv[0] == "systemctl":
            return self._systemctl(argv[1:])
        if argv[0] == "firewall-cmd":
            self.firewall.append(argv[1:])
            return ok
        if argv[0] == "ping":
            return (0 if self.gateway_echo and self._on_link(argv[-1]) == argv[-2] else 1), "", ""
        raise AssertionError(f"the engine ran a command no host has: {argv}")

    def _nmcli(self, a):
        if a in (["connection", "reload"], ["device", "reapply", "br0"]):
            return 0, "", ""
        if a[:1] == ["--wait"] and a[2:4] == ["connection", "up"]:
            name = a[-1]
            if name == "kvmcluster-br0" and self._read(NM_OURS):
                self._up("br0", ours=True)
            elif name == "kvmcluster-eth0":
                pass
            elif a[4:5] == ["id"] and name == "lab-eth0" and self._read(NM_OLD):
                self._up("eth0", old=True)
            else:
                return 10, "", f"Error: unknown connection '{name}'"
            return 0, "", ""
        raise AssertionError(f"unexpected nmcli {a}")

    def _ip(self, a):
        fam = a[0] if a[0] in ("-4", "-6") else None
        a = a[1:] if fam else a
        if a[:2] == ["addr", "flush"]:
            assert fam and a[2] == "dev" and a[4:] == (["scope", "global"] if fam == "-6"
                                                       else []), a
            dev = a[3]
            keep = [x for x in self.addrs.get(dev, []) if (":" in x) != (fam == "-6")]
            self.addrs[dev] = keep
        elif a[:2] == ["addr", "add"]:
            assert fam == ("-6" if ":" in a[2] else "-4") and a[3] == "dev", a
            self.addrs.setdefault(a[4], []).append(a[2])
        elif a[:2] == ["link", "del"]:
            self._down(a[2])
            self.links.pop(a[2], None)
        elif a[:2] == ["link", "set"] and a[3] == "nomaster":
            self.links[a[2]]["master"] = None
        elif a[:2] == ["link", "set"] and a[3] == "up":
            self.links[a[2]]["up"] = True
        elif a[:2] in (["route", "replace"], ["route", "del"]):
            # The kernel's identity of a route: family, destination and metric.
            assert fam in ("-4", "-6"), a
            dst, dev = a[2], a[a.index("dev") + 1]
            gw = a[a.index("via") + 1] if "via" in a else None
            metric = int(a[a.index("metric") + 1]) if "metric" in a else 0
            family = 6 if fam == "-6" else 4
            self.routes = [r for r in self.routes if not (
                r["family"] == family and r["dst"] == dst and (r.get("metric") or 0) == metric)]
            if a[1] == "replace":
                self.routes.append({"family": family, "dst": dst, "gateway": gw, "dev": dev,
                                    **({"metric": metric} if metric else {})})
        else:
            raise AssertionError(f"unexpected ip {fam} {a}")
        return 0, "", ""

    def _read(self, p):
        try:
            with open(self.path(p), encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _down(self, dev):
        self.addrs[dev] = []
        self.routes = [r for r in self.routes if r["dev"] != dev]
        for ln in self.links.values():
            if ln["master"] == dev:
                ln["master"] = None

    def _up(self, dev, ours=None, old=None):
        ours = ours or self._read("/etc/network/interfaces.d/kvmcluster")
        if dev == "br0" and ours:
            self.links["br0"] = {"kind": "bridge", "master": None, "up": True}
            self.links["eth0"]["master"] = "br0"
            if self.bridge_gets_address:
                self.addrs["br0"] = [f"{IP}/24", f"{IP6}/64"]
                self.routes.append({"family": 4, "dst": "default", "gateway": GW, "dev": "br0"})
                self.routes.append({"family": 4, "dst": "10.99.0.0/24", "gateway": GW,
                                    "dev": "br0"})
        elif dev == "eth0" and old:
            self.addrs["eth0"] = [f"{IP}/24", f"{IP6}/64"]
            self.routes.append({"family": 4, "dst": "default", "gateway": GW, "dev": "eth0"})
            self.routes.append({"family": 6, "dst": "default", "gateway": GW6, "dev": "eth0"})
        elif dev == "eth0" and "iface eth0 inet static" in (self._read(
                "/etc/network/interfaces") or ""):
            self.addrs["eth0"] = [f"{IP}/24"]   # ifupdown's old file: IPv4 only
            self.routes.append({"family": 4, "dst": "default", "gateway": GW, "dev": "eth0"})

    def _systemctl(self, a):
        quiet = [x for x in a if not x.startswith("--")]
        verb, unit = quiet[0], quiet[-1]
        if verb == "stop":
            self.timers.pop(unit.removesuffix(".timer"), None)
        elif verb == "is-active":
            return (0 if unit.removesuffix(".timer") in self.timers
                    or unit in self.services else 3), "", ""
        elif verb == "is-enabled":
            return (0 if unit in self.enabled else 1), "", ""
        elif verb == "enable":
            self.enabled.add(unit)
        elif verb == "disable":
            self.enabled.discard(unit)
            self.services.discard(unit)
        elif verb == "start":
            self.services.add(unit)
        elif verb == "restart" and unit == "network.service":   # initscripts: all ifcfg up
            self._up("br0")
        return 0, "", ""

    def fire(self, unit):
        """A timer elapses: systemd runs its command."""
        _, argv = self.timers.pop(unit)
        assert argv[2] == "rollback"
        self.tx._do_rollback(argv[3], argv[4])


class FakeSocket:
    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture
def host(tmp_path, monkeypatch):
    tx = load_module("_modules", "kvmcluster_nettxn")
    h = Host(tmp_path / "root", tx)
    monkeypatch.setattr(tx, "BASE", str(tmp_path / "state"))
    monkeypatch.setattr(tx, "BOOT_UNIT_PATH", str(tmp_path / "boot.service"))
    monkeypatch.setattr(tx, "_run", h.run)
    monkeypatch.setattr(tx.time, "sleep", lambda s: None)
    monkeypatch.setattr(tx.socket, "socket", FakeSocket)
    monkeypatch.setattr(tx, "_systemd_running", lambda: True)
    monkeypatch.setattr(tx, "_libvirt_follows_bridge", lambda txn, br: h.cmds.append(
        ["libvirt-follows", br]))
    monkeypatch.setattr(tx, "_tcp_answer",
                        lambda src, dst, port, timeout=3.0: (h.peer_answers, "refused (an answer)")
                        if h.peer_answers else (False, "timed out"))
    tx.__context__ = {}
    os.makedirs(h.path("/etc/network/interfaces.d"))
    with open(h.path("/etc/network/interfaces"), "w", encoding="utf-8") as fh:
        fh.write(OLD_IFACES)
    tx.boot_guard(install=True)
    return h


def spec(h, **kw):
    s = {
        "backend": "ifupdown", "bridge": "br0", "port": "eth0", "nics": ["eth0"],
        "address": f"{IP}/24", "ip": IP, "gateway": GW, "address6": [f"{IP6}/64"],
        "gateway6": None, "routes_moved": [dict(ROUTE, dev="br0")], "mode": "restart",
        "created": ["br0"], "rollback_after": 60, "confirm": "auto",
        "peer": {"address": PEER, "port": 22}, "check": {"gateway": "arp"},
        "files": {
            h.path("/etc/network/interfaces"): {"old": OLD_IFACES, "new": NEW_IFACES,
                                                "mode": 0o644, "old_mode": 0o644},
            h.path("/etc/network/interfaces.d/kvmcluster"): {"old": None, "new": NEW_OURS,
                                                             "mode": 0o644, "old_mode": None},
        },
        "before": {"addrs": {"eth0": [f"{IP}/24", f"{IP6}/64"]},
                   "routes": [{"gateway": GW, "dev": "eth0"}],
                   "routes6": [{"gateway": GW6, "dev": "eth0"}],
                   "static_routes": [ROUTE], "masters": {"eth0": None},
                   "ifupdown_up": ["eth0"], "nm_active": [], "nm_reup": []},
    }
    s.update(kw)
    return s


BACKEND_FILES = {
    "networkmanager": ((NM_OLD, "[connection]\nid=lab-eth0\n", None),
                       (NM_OURS, None, "[connection]\nid=kvmcluster-br0\n")),
    "netplan": ((NETPLAN_OLD, "network: {version: 2}\n", None),
                (NETPLAN_OURS, None, "network: {version: 2, bridges: {br0: {}}}\n")),
}


def backend_spec(h, backend, **kw):
    """A takeover on NetworkManager or netplan: the old profile goes, ours comes."""
    files = {}
    for path, old, new in BACKEND_FILES[backend]:
        files[h.path(path)] = {"old": old, "new": new, "mode": 0o600,
                               "old_mode": 0o600 if old else None}
        if old:
            os.makedirs(os.path.dirname(h.path(path)), exist_ok=True)
            with open(h.path(path), "w", encoding="utf-8") as fh:
                fh.write(old)
    before = dict(spec(h)["before"], ifupdown_up=[],
                  nm_active=["lab-eth0"] if backend == "networkmanager" else [])
    return spec(h, backend=backend, files=files, before=before, **kw)


def backend_back_as_before(h, backend):
    for path, old, _new in BACKEND_FILES[backend]:
        assert h._read(path) == old, path
    assert "br0" not in h.links and h.links["eth0"]["master"] is None
    assert sorted(h.addrs["eth0"]) == sorted([f"{IP}/24", f"{IP6}/64"])
    routes = {(r["family"], r["dst"], r.get("gateway"), r["dev"]) for r in h.routes}
    assert {(4, "default", GW, "eth0"), (6, "default", GW6, "eth0"),
            (4, "10.99.0.0/24", GW, "eth0")} <= routes


@pytest.mark.parametrize("backend", ["networkmanager", "netplan"])
def test_other_backends_take_over_and_roll_back(host, backend):
    host.links["eth0"]["master"] = None
    res = host.tx.begin(backend_spec(host, backend, confirm="manual"))
    assert res["phase"] == "applied", res
    assert host.addrs["br0"] == [f"{IP}/24", f"{IP6}/64"] and host.addrs["eth0"] == []
    host.fire(f"kvmcluster-net-rollback-{res['id']}")
    backend_back_as_before(host, backend)


@pytest.mark.parametrize("backend", ["networkmanager", "netplan"])
def test_other_backends_confirm_on_the_node(host, backend):
    res = host.tx.begin(backend_spec(host, backend))
    assert res["phase"] == "confirmed" and host.timers == {}
    for path, _old, new in BACKEND_FILES[backend]:
        assert host._read(path) == new


@pytest.mark.parametrize("backend", ["networkmanager", "netplan"])
def test_reload_on_other_backends_only_reloads(host, backend):
    files = {host.path(BACKEND_FILES[backend][1][0]): {
        "old": "a\n", "new": "b\n", "mode": 0o600, "old_mode": 0o600}}
    host.links["br0"] = {"kind": "bridge", "master": None, "up": True}
    host.links["eth0"]["master"] = "br0"
    host.addrs["br0"], host.addrs["eth0"] = [f"{IP}/24", f"{IP6}/64"], []
    host.routes = [{"family": 4, "dst": "default", "gateway": GW, "dev": "br0"},
                   {"family": 4, "dst": "10.99.0.0/24", "gateway": GW, "dev": "br0"}]
    res = host.tx.begin(spec(host, backend=backend, mode="reload", files=files, created=[],
                             confirm="manual"))
    assert res["phase"] == "applied"
    want = {"networkmanager": [["nmcli", "connection", "reload"],
                               ["nmcli", "device", "reapply", "br0"]],
            "netplan": [["netplan", "generate"], ["networkctl", "reload"]]}[backend]
    ran = [c for c in host.cmds if c[0] in ("nmcli", "netplan", "networkctl", "ifup",
                                             "ifdown")]
    assert ran == want
    host.cmds.clear()
    host.fire(f"kvmcluster-net-rollback-{res['id']}")
    ran = [c for c in host.cmds if c[0] in ("nmcli", "netplan", "networkctl", "ifup",
                                             "ifdown")]
    assert ran == want and host._read(BACKEND_FILES[backend][1][0]) == "a\n"
    assert host.addrs["br0"] == [f"{IP}/24", f"{IP6}/64"]


def files_are_old(h):
    assert h._read("/etc/network/interfaces") == OLD_IFACES
    assert h._read("/etc/network/interfaces.d/kvmcluster") is None


def back_as_before(h):
    files_are_old(h)
    assert "br0" not in h.links
    assert h.links["eth0"]["master"] is None
    assert sorted(h.addrs["eth0"]) == sorted([f"{IP}/24", f"{IP6}/64"])
    routes = {(r["family"], r["dst"], r.get("gateway"), r["dev"]) for r in h.routes}
    assert (4, "default", GW, "eth0") in routes
    assert (6, "default", GW6, "eth0") in routes
    assert (4, "10.99.0.0/24", GW, "eth0") in routes


def test_session_kept_and_peer_answers_confirms_on_the_node(host):
    res = host.tx.begin(spec(host))
    assert res["phase"] == "confirmed" and res["by"] == "node", res
    assert "management peer 172.30.10.11 answers over br0" in res["detail"]
    assert host.timers == {}                      # nothing left to roll it back
    assert host.addrs["br0"] == [f"{IP}/24", f"{IP6}/64"] and host.addrs["eth0"] == []
    assert host._read("/etc/network/interfaces.d/kvmcluster") == NEW_OURS


def test_silent_peer_waits_for_the_management_node(host):
    host.peer_answers = False
    res = host.tx.begin(spec(host))
    assert res["phase"] == "applied", res
    assert "not confirmed by the node itself" in res["detail"]
    assert list(host.timers) == [f"kvmcluster-net-rollback-{res['id']}"]


def test_window_starts_after_the_check_and_confirm_disarms_every_timer(host):
    res = host.tx.begin(spec(host, confirm="manual"))
    assert res["phase"] == "applied"
    # The guard armed before the apply is gone; the window is rollback_after from the check.
    assert {u: s for u, (s, _) in host.timers.items()} == {
        f"kvmcluster-net-rollback-{res['id']}": 60}
    assert res["deadline"] > 0
    got = host.tx.confirm()
    assert got["confirmed"] is True and got["phase"] == "confirmed"
    assert host.timers == {}
    assert host.tx.pending() is None


def test_guard_timer_covers_the_apply(host, monkeypatch):
    armed = []
    real = host.tx._do_apply
    monkeypatch.setattr(host.tx, "_do_apply",
                        lambda p: armed.append(dict(host.timers)) or real(p))
    host.tx.begin(spec(host, confirm="manual", rollback_after=45))
    (guard,) = armed[0].items()
    assert guard[0].startswith("kvmcluster-net-guard-") and guard[1][0] == 2 * 45 + 15


def test_unconfirmed_change_rolls_back_everything(host):
    res = host.tx.begin(spec(host, confirm="manual"))
    host.fire(f"kvmcluster-net-rollback-{res['id']}")
    ph = host.tx.history(1)[0]
    assert ph["phase"] == "rolled-back"
    assert "no confirmation" in ph["detail"]
    back_as_before(host)


def test_failed_check_rolls_back_at_once(host):
    host.bridge_gets_address = False
    res = host.tx.begin(spec(host))
    assert res["phase"] == "rolled-back"
    assert "br0 does not hold 172.30.10.41/24" in res["detail"]
    assert host.timers == {}
    back_as_before(host)


def test_check_refuses_a_bridge_without_the_address(host):
    host.links["br0"] = {"kind": "bridge", "master": None, "up": True}
    host.addrs["br0"], host.addrs["eth0"] = [f"{IP6}/64"], []
    host.routes.append({"family": 4, "dst": "default", "gateway": GW, "dev": "br0"})
    ok, why = host.tx._check(spec(host, routes_moved=[]), timeout=1)
    assert not ok and why == "br0 does not hold 172.30.10.41/24"
    host.addrs["br0"].append(f"{IP}/24")
    assert host.tx._check(spec(host, routes_moved=[]), timeout=1)[0]


def test_check_wants_the_moved_routes_and_a_gateway_that_resolves(host):
    host.links["br0"] = {"kind": "bridge", "master": None, "up": True}
    host.addrs["br0"], host.addrs["eth0"] = [f"{IP}/24", f"{IP6}/64"], []
    host.routes = [{"family": 4, "dst": "default", "gateway": GW, "dev": "br0"}]
    ok, why = host.tx._check(spec(host), timeout=1)
    assert not ok and why == "routes not on br0: 10.99.0.0/24"
    host.routes.append({"family": 4, "dst": "10.99.0.0/24", "gateway": GW, "dev": "br0"})
    host.gateway_alive = False
    ok, why = host.tx._check(spec(host), timeout=1)
    assert not ok and "does not answer on br0" in why
    assert host.tx._check(spec(host, check={"gateway": "none"}), timeout=1)[0]


def test_reboot_before_confirmation_rolls_back_at_boot(host):
    res = host.tx.begin(spec(host, confirm="manual"))
    host.timers.clear()                           # transient timers do not survive a reboot
    assert host.tx._main(["boot"]) == 0
    ph = host.tx.history(1)[0]
    assert ph["phase"] == "rolled-back" and ph.get("at_boot") is True, ph
    assert "rolled back at boot" in ph["detail"]
    files_are_old(host)
    assert res["id"] == ph["id"]


def test_boot_leaves_confirmed_transactions_alone(host):
    host.tx.begin(spec(host))
    host.tx._do_boot()
    assert host.tx.history(1)[0]["phase"] == "confirmed"
    assert host._read("/etc/network/interfaces.d/kvmcluster") == NEW_OURS


def test_a_transaction_whose_timer_was_lost_is_rolled_back_when_found(host, monkeypatch):
    res = host.tx.begin(spec(host, confirm="manual"))
    host.timers.clear()                           # lost: stopped by hand, a crash
    later = host.tx.time.time() + 3600
    monkeypatch.setattr(host.tx.time, "time", lambda: later)
    assert host.tx.pending(reap=False)["id"] == res["id"]   # test=True: found, not touched
    assert host.tx.history(1)[0]["phase"] == "applied"
    assert host.tx.pending() is None
    ph = host.tx.history(1)[0]
    assert ph["id"] == res["id"] and ph["phase"] == "rolled-back"
    assert ph["detail"].startswith("expired:")
    back_as_before(host)


def test_a_pending_transaction_refuses_a_second_one(host):
    host.tx.begin(spec(host, confirm="manual"))
    with pytest.raises(host.tx.CommandExecutionError, match="still applied"):
        host.tx.begin(spec(host))


def test_begin_refuses_without_the_boot_guard(host):
    host.enabled.clear()
    with pytest.raises(host.tx.CommandExecutionError, match="boot-time rollback"):
        host.tx.begin(spec(host))
    assert host.tx.history() == []


def test_reload_mode_leaves_the_bridge_up(host):
    host.tx.begin(spec(host))
    host.cmds.clear()
    dns = NEW_OURS + "    dns-nameservers 172.30.10.11\n"
    files = {host.path("/etc/network/interfaces.d/kvmcluster"): {
        "old": NEW_OURS, "new": dns, "mode": 0o644, "old_mode": 0o644}}
    res = host.tx.begin(spec(host, mode="reload", files=files, created=[]))
    assert res["phase"] == "confirmed"
    assert not [c for c in host.cmds if c[0] in ("ifdown", "ifup")
                or c[:3] in (["ip", "-4", "addr"], ["ip", "-6", "addr"])]
    assert host._read("/etc/network/interfaces.d/kvmcluster") == dns


def test_ifcfg_rollback_gives_networkmanager_back(host):
    before = dict(spec(host)["before"], nm_enabled=True, nm_running=True)
    host.enabled.add("NetworkManager.service")
    res = host.tx.begin(spec(host, backend="ifcfg", confirm="manual", before=before))
    assert "NetworkManager.service" not in host.enabled
    host.fire(f"kvmcluster-net-rollback-{res['id']}")
    assert "NetworkManager.service" in host.enabled
    assert "NetworkManager.service" in host.services


def test_an_apply_past_its_budget_is_rolled_back(host, monkeypatch):
    clock = iter(range(0, 100000, 40))
    monkeypatch.setattr(host.tx.time, "monotonic", lambda: next(clock))
    res = host.tx.begin(spec(host))
    assert res["phase"] == "rolled-back", res
    files_are_old(host)


def test_rolled_back_confirm_says_so(host):
    res = host.tx.begin(spec(host, confirm="manual"))
    host.fire(f"kvmcluster-net-rollback-{res['id']}")
    got = host.tx.confirm()
    assert got["confirmed"] is False and got["phase"] == "rolled-back"
    assert host.tx.__context__["retcode"] == 1


def test_boot_unit_runs_before_every_network_service(host):
    text = host.tx.boot_unit_text()
    before = next(line for line in text.splitlines() if line.startswith("Before="))
    for unit in ("network-pre.target", "networking.service", "NetworkManager.service",
                 "systemd-networkd.service", "network.service"):
        assert unit in before.split("=", 1)[1].split()
    assert "DefaultDependencies=no" in text and "boot\n" in text


def test_tcp_answer_counts_accepted_and_refused_not_silence():
    import socket  # the real one: loopback only

    tx = load_module("_modules", "kvmcluster_nettxn")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        assert tx._tcp_answer("127.0.0.1", "127.0.0.1", port) == (True, "accepted")
    finally:
        srv.close()
    assert tx._tcp_answer(None, "127.0.0.1", port) == (True, "refused (an answer)")
    ok, why = tx._tcp_answer("127.0.0.1", "::1", port, timeout=0.5)  # families differ: no bind
    assert ok is True or "refused" not in why


def test_peer_behind_the_gateway_is_proven_through_it(host):
    res = host.tx.begin(spec(host, peer={"address": "10.20.0.5", "port": 4506}))
    assert res["phase"] == "confirmed"
    assert "via 172.30.10.1" in res["detail"] and "TCP 4506" in res["detail"]


def test_unresolved_gateway_denies_the_self_confirmation(host, monkeypatch):
    host.tx.begin(spec(host, check={"gateway": "none"}, confirm="manual"))
    host.tx.confirm()
    host.gateway_alive = False
    proved, why = host.tx._peer_proof(spec(host, peer={"address": "10.20.0.5", "port": 22}))
    assert not proved and why == "172.30.10.1 does not resolve on br0"
    proved, why = host.tx._peer_proof(spec(host, peer=None))
    assert not proved and why == "no management peer known"


def test_icmp_check_needs_an_echo(host):
    host.tx.begin(spec(host, check={"gateway": "icmp"}, confirm="manual"))
    assert host.tx.history(1)[0]["phase"] == "applied"
    host.tx.confirm()
    host.gateway_echo = False
    ok, why = host.tx._gateway_answers(spec(host, check={"gateway": "icmp"}))
    assert not ok and why == "gateway 172.30.10.1 does not answer on br0"
    ok, why = host.tx._gateway_answers(spec(host, check={"gateway": "arp"}))
    assert ok and why == "gateway 172.30.10.1 resolves (ARP/ND)"


def test_firewalld_zone_follows_the_bridge_and_back(host):
    before = dict(spec(host)["before"], zone="public")
    res = host.tx.begin(spec(host, before=before, confirm="manual"))
    assert ["--zone=public", "--change-interface=br0"] in host.firewall
    assert ["--permanent", "--zone=public", "--change-interface=br0"] in host.firewall
    host.firewall.clear()
    host.fire(f"kvmcluster-net-rollback-{res['id']}")
    assert ["--zone=public", "--change-interface=eth0"] in host.firewall
    assert ["--permanent", "--zone=public", "--change-interface=eth0"] in host.firewall


@pytest.mark.parametrize("backend", ["netplan", "ifcfg"])
def test_boot_rollback_does_what_the_backend_reads_early(host, backend):
    before = dict(spec(host)["before"], nm_enabled=True, nm_running=True)
    host.enabled.add("NetworkManager.service")
    sp = backend_spec(host, "netplan", confirm="manual") if backend == "netplan" else \
        spec(host, backend="ifcfg", confirm="manual", before=before)
    host.tx.begin(sp)
    host.cmds.clear()
    host.tx._do_boot()
    if backend == "netplan":
        assert ["netplan", "generate"] in host.cmds
    else:
        assert ["systemctl", "enable", "NetworkManager.service"] in host.cmds
        assert ["systemctl", "start", "--no-block", "NetworkManager.service"] in host.cmds


def test_confirm_by_id_and_history(host):
    res = host.tx.begin(spec(host, confirm="manual"))
    with pytest.raises(host.tx.CommandExecutionError, match="no network transaction nope"):
        host.tx.confirm("nope")
    got = host.tx.confirm(res["id"])
    assert got["confirmed"] is True and got["id"] == res["id"]
    again = host.tx.confirm(res["id"])
    assert again["confirmed"] is True and again["phase"] == "confirmed"
    hist = host.tx.history(5)
    assert [h["phase"] for h in hist] == ["confirmed"]
    assert any("confirmed: confirmed by the management node" in line for line in hist[0]["log"])


def test_old_transactions_are_pruned(host, monkeypatch):
    monkeypatch.setattr(host.tx, "KEEP", 2)
    ids = []
    for _ in range(4):
        res = host.tx.begin(spec(host, confirm="manual"))
        host.tx.confirm()
        ids.append(res["id"])
        host.links.pop("br0", None)
        host.links["eth0"]["master"] = None
        host.addrs = {"lo": ["127.0.0.1/8"], "eth0": [f"{IP}/24", f"{IP6}/64"]}
    assert [h["id"] for h in host.tx.history(10)] == ids[-2:]


IP_ADDR = [
    {"ifname": "br0", "addr_info": [
        {"family": "inet", "local": IP, "prefixlen": 24, "scope": "global"},
        {"family": "inet6", "local": IP6, "prefixlen": 64, "scope": "global"},
        {"family": "inet6", "local": "fd00:30:10::5054:ff:fe30:100", "prefixlen": 64,
         "scope": "global", "dynamic": True, "mngtmpaddr": True},
        {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8,
                                    "scope": "host"}]}]
IP_ROUTE4 = [{"dst": "default", "gateway": GW, "dev": "br0"},
             {"dst": "172.30.10.0/24", "dev": "br0", "protocol": "kernel"},
             {"dst": "10.99.0.0/24", "gateway": GW, "dev": "br0", "protocol": "static"},
             {"dst": "10.98.0.0/24", "gateway": GW, "dev": "br0", "protocol": "dhcp"},
             {"dst": "10.97.0.0/24", "dev": "br0", "type": "blackhole"}]
IP_ROUTE6 = [{"dst": "default", "gateway": GW6, "dev": "br0", "protocol": "ra"},
             {"dst": "fe80::/64", "dev": "br0", "protocol": "kernel"},
             {"dst": "fd00:99::/64", "gateway": GW6, "dev": "br0", "metric": 1024}]


def test_runtime_keeps_what_an_operator_configured(monkeypatch):
    tx = load_module("_modules", "kvmcluster_nettxn")
    answers = {("-d", "link", "show"): [{"ifname": "br0", "address": "52:54:00:AA:00:01",
                                         "mtu": 1500, "flags": ["UP"],
                                         "linkinfo": {"info_kind": "bridge"}}],
               ("addr", "show"): IP_ADDR, ("-4", "route", "show"): IP_ROUTE4,
               ("-6", "route", "show"): IP_ROUTE6}
    monkeypatch.setattr(tx, "_ip_json", lambda *a: answers[a])
    rt = tx.runtime()
    assert rt["links"]["br0"] == {"mac": "52:54:00:aa:00:01", "mtu": 1500, "master": None,
                                  "kind": "bridge", "data": {}, "slave": {}, "up": True}
    assert rt["addrs"] == {"br0": [f"{IP}/24", f"{IP6}/64"], "lo": ["127.0.0.1/8"]}
    assert rt["slaac"] == {"br0": ["fd00:30:10::5054:ff:fe30:100/64"]}
    assert rt["routes"] == [{"gateway": GW, "dev": "br0"}]
    assert rt["routes6"] == [{"gateway": GW6, "dev": "br0"}]
    assert rt["static_routes"] == [
        {"family": 4, "dst": "10.99.0.0/24", "gateway": GW, "dev": "br0", "metric": None},
        {"family": 6, "dst": "fd00:99::/64", "gateway": GW6, "dev": "br0", "metric": 1024}]


def test_the_script_entry_points(host):
    res = host.tx.begin(spec(host, confirm="manual"))
    path = os.path.join(host.tx.BASE, "txn", res["id"])
    assert host.tx._main(["apply", path]) == 1          # not armed any more: skipped
    assert host.tx._main(["rollback", path]) == 0
    assert host.tx.history(1)[0]["detail"] == "rollback requested"
    assert host.tx._main(["rollback", path, "again"]) == 0   # final: nothing to do
    assert host.tx.history(1)[0]["phase"] == "rolled-back"
    assert host.tx._main(["boot"]) == 0
    assert host.tx._main([]) == 64 and host.tx._main(["apply"]) == 64


def test_rollback_on_request_and_nothing_to_confirm_later(host, monkeypatch):
    with pytest.raises(host.tx.CommandExecutionError, match="no pending network transaction"):
        host.tx.rollback()
    res = host.tx.begin(spec(host, confirm="manual"))
    with pytest.raises(host.tx.CommandExecutionError, match="no pending network transaction x"):
        host.tx.rollback("x")
    got = host.tx.rollback(res["id"])
    assert got["phase"] == "rolled-back" and got["detail"] == "rolled back on request"
    back_as_before(host)
    later = host.tx.time.time() + 3601
    monkeypatch.setattr(host.tx.time, "time", lambda: later)
    assert host.tx.confirm() == {"confirmed": False, "id": None, "comment": "nothing to confirm"}


def test_replaced_files_are_kept_beyond_the_transaction(host):
    res = host.tx.begin(spec(host))
    kept = os.path.join(host.tx.BASE, "replaced", res["id"],
                        host.path("/etc/network/interfaces").lstrip("/"))
    with open(kept, encoding="utf-8") as fh:
        assert fh.read() == OLD_IFACES
    assert oct(os.stat(kept).st_mode & 0o777) == "0o600"
    assert not os.path.exists(os.path.join(host.tx.BASE, "replaced", res["id"], host.path(
        "/etc/network/interfaces.d/kvmcluster").lstrip("/")))  # it did not exist before


def test_boot_guard_installs_the_unit_and_the_script(host):
    with open(host.tx.BOOT_UNIT_PATH, encoding="utf-8") as fh:
        assert fh.read() == host.tx.boot_unit_text()
    assert os.access(host.tx._script(), os.X_OK)
    assert "kvmcluster-net-boot-rollback.service" in host.enabled
    assert ["systemctl", "daemon-reload"] in host.cmds
    assert host.tx.boot_guard() == {"installed": True, "enabled": True}
    os.unlink(host.tx._script())
    assert host.tx.boot_guard()["installed"] is False


def test_rollback_keeps_one_copy_of_each_route(host, monkeypatch):
    """A backend brought back up may add a route of the old configuration again with a
    metric of its own beside the one the rollback restored: one copy stays, as before."""
    res = host.tx.begin(spec(host, confirm="manual"))
    real_run = host.tx._run

    def run(argv, *a, **kw):
        out = real_run(argv, *a, **kw)
        if argv[:4] == ["ip", "-4", "route", "replace"] and "10.99.0.0/24" in argv:
            # networkd, say, puts its own copy back at metric 100.
            host.routes.append({"family": 4, "dst": "10.99.0.0/24", "gateway": GW,
                                "dev": argv[argv.index("dev") + 1], "metric": 100})
        return out

    monkeypatch.setattr(host.tx, "_run", run)
    host.tx.rollback(res["id"])
    copies = [r for r in host.routes if r["dst"] == "10.99.0.0/24"]
    assert copies == [{"family": 4, "dst": "10.99.0.0/24", "gateway": GW, "dev": "eth0"}], copies
    back_as_before(host)
