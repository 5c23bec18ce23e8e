"""The bridge takeover on the converged 3-node lab (one node per backend: kvm01 ifupdown,
kvm02 NetworkManager, kvm03 netplan with systemd-networkd), then its faults: each must end
with the node reachable at its address and its configuration consistent.

Runs after test_lab_formula (which made the first takeover over the salt-ssh session it
moves, confirmed it, and saw a second run with 0 changes)."""
import json
import os
import signal
import subprocess
import time

import pytest

from lab import net, report, saltcfg
from lab.report import summarize
from labtest import record_timing, ssh

NODES = ["kvm01", "kvm02", "kvm03"]
ROLLBACK = saltcfg.ROLLBACK_TIMEOUT  # seconds; the lab pillar's (the shortest allowed)
FINAL = ("confirmed", "rolled-back", "failed")  # the engine's last phases

BRIDGE_PY = r"""
import json, subprocess
ip = lambda *a: json.loads(subprocess.run(["ip", "-j", *a], capture_output=True,
                                          text=True).stdout or "[]")
links = {l["ifname"]: l for l in ip("-d", "link", "show")}
addrs = {l["ifname"]: [a["local"] + "/" + str(a["prefixlen"]) for a in l["addr_info"]
                       if a["family"] == "inet"] for l in ip("addr", "show")}
routes = [(r.get("gateway"), r.get("dev")) for r in ip("-4", "route", "show", "default")]
print(json.dumps({"br0": addrs.get("br0", []), "eth0": addrs.get("eth0", []),
                  "eth0_master": links.get("eth0", {}).get("master"),
                  "br0_kind": links.get("br0", {}).get("linkinfo", {}).get("info_kind"),
                  "br0_mac": links.get("br0", {}).get("address"),
                  "eth0_mac": links.get("eth0", {}).get("address"),
                  "mtu": {n: links[n]["mtu"] for n in ("eth0", "br0") if n in links},
                  "routes": routes}))
"""

ROUTES_PY = r"""
import json, subprocess
ip = lambda *a: json.loads(subprocess.run(["ip", "-j", *a], capture_output=True,
                                          text=True).stdout or "[]")
print(json.dumps({"v6": [a["local"] + "/" + str(a["prefixlen"]) for l in ip("addr", "show", "br0")
                         for a in l["addr_info"] if a["family"] == "inet6"
                         and a.get("scope") == "global"],
                  "routes": sorted(r["dst"] + " " + r["dev"] for f in ("-4", "-6")
                                   for r in ip(f, "route", "show")
                                   if r["dst"] in ("10.99.0.0/24", "fd00:99::/64")),
                  "default6": [r.get("dev") for r in ip("-6", "route", "show", "default")]}))
"""

HISTORY = "python3 -c 'import json,glob; print(json.dumps({d.split(\"/\")[-1]: " \
          "json.load(open(d + \"/phase.json\")) for d in sorted(glob.glob(" \
          "\"/var/lib/kvmcluster/network/txn/*\"))}))'"


def bridge_state(lab, node):
    return json.loads(lab.ssh(node, "python3 -", input=BRIDGE_PY, timeout=30))


def history(lab, node):
    return json.loads(lab.ssh(node, HISTORY))


def pinged(ip):
    return subprocess.run(["ip", "netns", "exec", net.CONTROLLER, "ping", "-n", "-q", "-c", "1",
                           "-W", "1", ip], capture_output=True, check=False).returncode == 0


def wait_for(what, pred, timeout):
    """Poll ``pred`` once a second up to ``timeout`` seconds; the seconds it took."""
    t0 = time.monotonic()
    for _ in range(int(timeout) + 1):
        try:
            if pred():
                return time.monotonic() - t0
        except (AssertionError, subprocess.TimeoutExpired, ValueError):
            pass
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout}s")


def fault_pillar(lab, node, **entry):
    p = json.loads(json.dumps(lab.pillar))
    p["kvmcluster"].setdefault("network", {})["rollback_timeout"] = ROLLBACK
    p["kvmcluster"]["nodes"][node].update(entry)
    return p


def start_apply(node):
    """salt-ssh state.apply on one node, in the background (its own process group)."""
    env = dict(os.environ, PATH=f"{saltcfg.VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin")
    return subprocess.Popen(saltcfg.salt_ssh_argv(node, "state.apply", "kvmcluster",
                                                  "--out=json", "--static"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def bridged(lab):
    """The lab converged and confirmed (a no-op when test_lab_formula already did it)."""
    results, proc = lab.apply()
    assert proc.returncode == 0, proc.stdout[-3000:]
    return lab


def test_one_command_holds_after_the_rollback_window(bridged):
    """No second command: past rollback_timeout + 30 s after each node's own confirmation,
    every node still holds its addresses on br0 and nothing was rolled back."""
    lab = bridged
    last = {n: list(history(lab, n).values())[-1] for n in NODES}
    for n, ph in last.items():
        assert ph["phase"] == "confirmed" and ph.get("by") == "node", (n, ph)
        assert "management peer" in ph["detail"], ph
    remote_now = float(lab.ssh("kvm01", "date +%s.%N"))
    newest = max(ph["time"] for ph in last.values())
    time.sleep(max(0.0, newest + ROLLBACK + 30 - remote_now))
    since = float(lab.ssh("kvm01", "date +%s.%N")) - newest
    for n in NODES:
        st = bridge_state(lab, n)
        assert st["br0"] == [lab.ip[n] + "/24"] and st["eth0"] == [], (n, st)
        assert all(ph["phase"] != "rolled-back" for ph in history(lab, n).values()), n
        assert pinged(lab.ip[n])
    assert since >= ROLLBACK + 30
    record_timing("one command: seconds since the last node confirmed itself, when checked "
                  "(>= rollback_timeout + 30); 0 nodes rolled back", since)


def test_ipv6_and_static_routes_moved_to_br0(bridged):
    lab = bridged
    for n in NODES:
        got = json.loads(lab.ssh(n, "python3 -", input=ROUTES_PY))
        assert got["v6"] == [f"{net.ip6_of(lab.ip[n])}/64"], (n, got)
        assert got["routes"] == ["10.99.0.0/24 br0", "fd00:99::/64 br0"], (n, got)
        assert got["default6"] == ["br0"], (n, got)
    # Node to node over IPv6, through both bridges.
    out = lab.ssh("kvm01", f"ping -6 -n -c 2 -W 2 {net.ip6_of(lab.ip['kvm03'])}")
    assert " 0% packet loss" in out, out


def test_each_backend_took_eth0_into_br0(bridged):
    lab = bridged
    for node in NODES:
        st = bridge_state(lab, node)
        assert st["br0_kind"] == "bridge", (node, st)
        assert st["br0"] == [lab.ip[node] + "/24"], (node, st)
        assert st["eth0"] == [] and st["eth0_master"] == "br0", (node, st)
        assert st["br0_mac"] == st["eth0_mac"], (node, st)  # br0 took the port's MAC
        assert [tuple(r) for r in st["routes"]] == [("172.30.10.1", "br0")], (node, st)
        # Reachable at the same address, through br0, from the management namespace.
        assert pinged(lab.ip[node])
        assert lab.ssh(node, "hostname").strip() == node
        hist = history(lab, node)
        assert hist and list(hist.values())[-1]["phase"] == "confirmed", hist
        assert not any(ph["phase"] == "rolled-back" and "boot" in ph["detail"]
                       for ph in hist.values())
        assert "nameserver 172.30.10.11" in lab.ssh(node, "cat /etc/resolv.conf")
    # Each backend wrote its own complete configuration, and took eth0 from the old one.
    assert "bridge_ports eth0" in lab.ssh("kvm01", "cat /etc/network/interfaces.d/kvmcluster")
    assert "iface eth0 inet static" not in lab.ssh("kvm01", "cat /etc/network/interfaces")
    nm = lab.ssh("kvm02", "nmcli -t -f DEVICE,STATE,CONNECTION device")
    assert "br0:connected:kvmcluster-br0" in nm and "eth0:connected:kvmcluster-eth0" in nm, nm
    assert lab.ssh("kvm02", "ls /etc/NetworkManager/system-connections").split() == [
        "kvmcluster-br0.nmconnection", "kvmcluster-eth0.nmconnection"]
    nd = lab.ssh("kvm03", "networkctl list --no-legend")
    assert any(line.split()[1:] == ["br0", "bridge", "routable", "configured"]
               for line in nd.splitlines()), nd
    assert lab.ssh("kvm03", "ls /etc/netplan").split() == ["60-kvmcluster.yaml"]
    assert lab.ssh("kvm03", "ls /var/lib/kvmcluster/network/replaced/*/etc/netplan").split() \
        == ["50-lab.yaml"]  # the replaced file is kept, not lost


def test_guests_get_a_bridge_network(bridged):
    for node in NODES:
        out = json.loads(bridged.ssh(node, "python3 -c 'import json, libvirt; "
                                     "n = libvirt.open(\"qemu:///system\").networkLookupByName("
                                     "\"host-bridge\"); print(json.dumps([n.isActive(), "
                                     "n.autostart(), n.bridgeName()]))'"))
        assert out == [1, 1, "br0"], (node, out)


def test_wrong_gateway_is_rolled_back_at_once(bridged):
    lab = bridged
    lab.set_pillar(fault_pillar(lab, "kvm01", gateway="172.30.10.254"))
    try:
        t0 = time.monotonic()
        results, proc = report.apply(target="kvm01", confirm_network=False)
        took = time.monotonic() - t0
    finally:
        lab.reset_pillar()
    record_timing("fault: wrong gateway on kvm01 (ifupdown), apply until rolled back", took)
    res = results["kvm01"][next(k for k in results["kvm01"] if "bridge-managed" in k)]
    assert res["result"] is False
    assert "rolled-back" in res["comment"]
    assert "gateway 172.30.10.254 does not answer on br0" in res["comment"], res["comment"]
    st = bridge_state(lab, "kvm01")
    assert st["br0"] == ["172.30.10.41/24"] and [tuple(r) for r in st["routes"]] == [
        ("172.30.10.1", "br0")], st
    assert "gateway 172.30.10.1" in lab.ssh("kvm01", "cat /etc/network/interfaces.d/kvmcluster")
    again, _ = report.apply(target="kvm01")
    assert summarize(again["kvm01"])["changed"] == 0, summarize(again["kvm01"])


def test_wrong_ip_is_rolled_back_without_confirmation(bridged):
    lab = bridged
    wrong = "172.30.10.142"
    lab.set_pillar(fault_pillar(lab, "kvm02", ip=f"{wrong}/24"))
    t0 = time.monotonic()
    proc = start_apply("kvm02")
    try:
        # The node moves to the wrong address; the session to the right one is cut off.
        moved = wait_for("kvm02 answering at the wrong address", lambda: pinged(wrong), 150)
        assert not pinged(lab.ip["kvm02"])  # its own address is gone until the rollback
    finally:
        kill(proc)
        lab.reset_pillar()
    # Nobody can confirm at the address the management node knows: the node undoes it.
    wait_for("kvm02 back at 172.30.10.42",
             lambda: bridge_state(lab, "kvm02")["br0"] == ["172.30.10.42/24"],
             ROLLBACK + 90)
    total = time.monotonic() - t0
    record_timing("fault: wrong IP on kvm02 (NetworkManager), apply until the node answers "
                  "at the wrong IP", moved)
    record_timing("fault: wrong IP on kvm02 (NetworkManager), apply until reachable again at "
                  "its own IP (rolled back)", total)
    assert not pinged(wrong)
    last = final_txn(lab, "kvm02")
    assert last["phase"] == "rolled-back", last
    assert "no confirmation from the management node" in last["detail"]
    assert "address1=172.30.10.42/24" in lab.ssh(
        "kvm02", "cat /etc/NetworkManager/system-connections/kvmcluster-br0.nmconnection")
    again, _ = report.apply(target="kvm02")
    assert summarize(again["kvm02"])["changed"] == 0, summarize(again["kvm02"])


def test_killed_session_mid_apply_is_rolled_back(bridged):
    lab = bridged
    before = set(history(lab, "kvm03"))
    pillar = fault_pillar(lab, "kvm03", mtu=1400)
    # The node would prove the path and confirm itself; manual makes it wait, to be killed.
    pillar["kvmcluster"]["network"]["confirm"] = "manual"
    lab.set_pillar(pillar)
    t0 = time.monotonic()
    proc = start_apply("kvm03")
    try:
        started = wait_for("a transaction on kvm03",
                           lambda: set(history(lab, "kvm03")) - before, 150)
    finally:
        kill(proc)  # the management node's session is gone mid-apply
        lab.reset_pillar()
    record_timing("fault: session killed on kvm03 (netplan), apply until the kill", started)
    (txn,) = set(history(lab, "kvm03")) - before
    wait_for("kvm03 transaction rolled back",
             lambda: history(lab, "kvm03")[txn]["phase"] == "rolled-back", ROLLBACK + 90)
    record_timing("fault: session killed on kvm03 (netplan), apply until rolled back",
                  time.monotonic() - t0)
    st = bridge_state(lab, "kvm03")
    assert st["br0"] == ["172.30.10.43/24"] and st["mtu"] == {"eth0": 1500, "br0": 1500}, st
    assert "mtu: 1400" not in lab.ssh("kvm03", "cat /etc/netplan/60-kvmcluster.yaml")
    assert pinged(lab.ip["kvm03"])
    # The rollback put back the bridge's IPv6 address and the routes as they were.
    got = json.loads(lab.ssh("kvm03", "python3 -", input=ROUTES_PY))
    assert got == {"v6": [f"{net.ip6_of(lab.ip['kvm03'])}/64"],
                   "routes": ["10.99.0.0/24 br0", "fd00:99::/64 br0"], "default6": ["br0"]}, got
    again, _ = report.apply(target="kvm03")
    assert summarize(again["kvm03"])["changed"] == 0, summarize(again["kvm03"])


def test_disruptive_change_under_a_guest_is_refused(bridged):
    lab = bridged
    # What libvirt does for a guest's NIC on br0: a tap, port of the bridge.
    lab.ssh("kvm01", "ip tuntap add vnet7 mode tap && ip link set vnet7 master br0 up")
    lab.set_pillar(fault_pillar(lab, "kvm01", gateway="172.30.10.254"))
    try:
        results, _ = report.apply(target="kvm01", confirm_network=False)
    finally:
        lab.reset_pillar()
        lab.ssh("kvm01", "ip link del vnet7")
    res = results["kvm01"][next(k for k in results["kvm01"] if "bridge-managed" in k)]
    assert res["result"] is False and res["changes"] == {}
    assert "refusing a disruptive change of br0: guests are attached to it (vnet7)" in \
        res["comment"]
    assert "gateway 172.30.10.1" in lab.ssh("kvm01", "cat /etc/network/interfaces.d/kvmcluster")


def set_roster_host(node, host):
    """The operator's roster entry for ``node`` (where salt-ssh reaches it)."""
    import yaml  # pylint: disable=import-outside-toplevel

    path = saltcfg.SALT_DIR / "roster"
    roster = yaml.safe_load(path.read_text())
    roster[node]["host"] = host
    path.write_text(yaml.safe_dump(roster, sort_keys=False))


def last_txn(lab, node, ip=None):
    hist = json.loads(report_ssh(ip or lab.ip[node], HISTORY))
    return list(hist.values())[-1]


def final_txn(lab, node, ip=None, bound=30):
    """The last transaction once it has ended: the address is back before the rollback's
    last step (routes are looked at once more), so its record lags a little."""
    wait_for(f"the last transaction on {node} to end",
             lambda: last_txn(lab, node, ip)["phase"] in FINAL, bound)
    return last_txn(lab, node, ip)


def report_ssh(ip, command):
    """A command on a node by address (its pillar address may not be the lab's)."""
    return ssh(ip, command, timeout=60)


@pytest.fixture
def icmp_dropped():
    """The lab gateway drops ICMP echo (as many gateways do), for one test only."""
    key = "net.ipv4.icmp_echo_ignore_all"
    net.nsexec(net.CONTROLLER, "sysctl", "-q", "-w", f"{key}=1")
    try:
        yield
    finally:
        net.nsexec(net.CONTROLLER, "sysctl", "-q", "-w", f"{key}=0")


def test_gateway_that_drops_icmp_is_proven_by_arp(bridged, icmp_dropped):
    lab = bridged
    assert not pinged("172.30.10.1")
    # A disruptive change (the port's MTU) with the default check: neighbour resolution.
    lab.set_pillar(fault_pillar(lab, "kvm01", mtu=1400))
    try:
        t0 = time.monotonic()
        kept, _ = report.apply(target="kvm01")
        took = time.monotonic() - t0
        icmp = fault_pillar(lab, "kvm01", mtu=1300)
        icmp["kvmcluster"]["network"]["check"] = {"gateway": "icmp"}
        lab.set_pillar(icmp)
        refused, _ = report.apply(target="kvm01")
    finally:
        lab.reset_pillar()
    res = kept["kvm01"][next(k for k in kept["kvm01"] if "bridge-managed" in k)]
    assert res["result"] is True, res["comment"]
    assert "gateway 172.30.10.1 resolves (ARP/ND)" in res["comment"]
    assert "confirmed by the node itself" in res["comment"]
    record_timing("gateway drops ICMP: MTU change on kvm01 kept with check arp", took)
    assert bridge_state(lab, "kvm01")["mtu"] == {"eth0": 1400, "br0": 1400}
    # The same kind of change with check: icmp cannot prove the gateway and is undone.
    res = refused["kvm01"][next(k for k in refused["kvm01"] if "bridge-managed" in k)]
    assert res["result"] is False and res["changes"] == {}, res
    assert "gateway 172.30.10.1 does not answer on br0" in res["comment"]
    assert bridge_state(lab, "kvm01")["mtu"] == {"eth0": 1400, "br0": 1400}
    again, _ = report.apply(target="kvm01")  # back to the lab pillar's MTU 1500
    assert bridge_state(lab, "kvm01")["mtu"] == {"eth0": 1500, "br0": 1500}
    assert summarize(again["kvm01"])["failed"] == 0


def test_readdressing_waits_for_the_orchestration(bridged):
    """Re-addressing: the node cannot confirm itself; the orchestration confirms it at its
    new address; then the same change without it goes back by itself."""
    lab = bridged
    old, new = lab.ip["kvm02"], "172.30.10.52"
    moved = json.loads(json.dumps(lab.pillar))
    moved["kvmcluster"]["nodes"]["kvm02"]["ip"] = f"{new}/24"
    lab.set_pillar(moved)
    try:
        t0 = time.monotonic()
        proc = saltcfg.salt_run("state.orchestrate", "kvmcluster.orch.network",
                                'pillar={"ssh": true, "target": "kvm02"}', "--out=json",
                                timeout=600)
        took = time.monotonic() - t0
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert pinged(new) and not pinged(old)
        ph = last_txn(lab, "kvm02", ip=new)
        assert ph["phase"] == "confirmed" and ph.get("by") == "management", ph
        record_timing("re-addressing kvm02 by the orchestration, until confirmed", took)
        # Back to the old address the plain way, with the roster at the new one: nobody
        # confirms, so the node returns to where it was (new) by itself.
        set_roster_host("kvm02", new)
        lab.reset_pillar()
        t0 = time.monotonic()
        results, _ = report.apply(target="kvm02")
        res = results["kvm02"][next(k for k in results["kvm02"] if "bridge-managed" in k)]
        assert res["result"] is True and "re-addressing" in res["comment"], res["comment"]
        assert res["changes"]["runtime"]["confirmation"]["by"] == "management"
        wait_for("kvm02 at the pillar's address", lambda: pinged(old), 60)
        back = wait_for("kvm02 back at its previous address", lambda: pinged(new),
                        ROLLBACK + 90)
        record_timing("re-addressing kvm02 without confirmation, until back at its previous "
                      "address", time.monotonic() - t0)
        assert back <= 12 + 5 + ROLLBACK + 30 + 30
        ph = final_txn(lab, "kvm02", ip=new)
        assert ph["phase"] == "rolled-back" and "no confirmation" in ph["detail"], ph
    finally:
        # Whatever happened, the orchestration brings kvm02 home to the lab's address.
        lab.reset_pillar()
        if not pinged(old):
            set_roster_host("kvm02", new)
            saltcfg.salt_run("state.orchestrate", "kvmcluster.orch.network",
                             'pillar={"ssh": true, "target": "kvm02"}', timeout=600)
        set_roster_host("kvm02", old)
    assert bridge_state(lab, "kvm02")["br0"] == [old + "/24"]


def test_reboot_before_confirmation_rolls_back_at_boot(bridged):
    lab = bridged
    old, new = lab.ip["kvm01"], "172.30.10.141"
    moved = fault_pillar(lab, "kvm01", ip=f"{new}/24")
    moved["kvmcluster"]["network"]["rollback_timeout"] = 300  # only the reboot undoes it
    lab.set_pillar(moved)
    try:
        results, _ = report.apply(target="kvm01")
    finally:
        lab.reset_pillar()
    res = results["kvm01"][next(k for k in results["kvm01"] if "bridge-managed" in k)]
    assert "re-addressing" in res["comment"], res["comment"]
    wait_for("kvm01 at the new address", lambda: pinged(new), 60)
    # It answers there during its local check; then it waits for a confirmation.
    wait_for("kvm01 waiting for confirmation",
             lambda: last_txn(lab, "kvm01", ip=new)["phase"] == "applied", 60)
    report_ssh(new, "systemd-run --on-active=1 systemctl reboot")
    back = wait_for("kvm01 back at its old address after the reboot",
                    lambda: lab.ssh("kvm01", "systemctl is-system-running", check=False,
                                    timeout=20).strip() in ("running", "degraded"), 120)
    record_timing("reboot of kvm01 with an unconfirmed re-addressing, until up at its old "
                  "address", back)
    ph = final_txn(lab, "kvm01")
    assert ph["phase"] == "rolled-back" and ph.get("at_boot") is True, ph
    assert "rolled back at boot" in ph["detail"]
    assert not pinged(new)
    st = bridge_state(lab, "kvm01")
    assert st["br0"] == [old + "/24"] and st["eth0_master"] == "br0", st
    again, _ = report.apply(target="kvm01")
    assert summarize(again["kvm01"])["changed"] == 0, summarize(again["kvm01"])
