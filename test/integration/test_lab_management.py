"""The management node: a container node (mgmt01, at the seed's second DNS address) beside
two hypervisor nodes. It serves DNS and DHCP from pillar with dnsmasq, is no hypervisor,
and the account has password-less sudo on every node. Replaces the lab with its own."""
import base64
import copy
import json
import shlex
import subprocess
import time

import pytest

from lab import control, guest, net, paths, saltcfg
from lab.report import summarize
from labtest import Lab, record_timing, show

HYPERVISORS = ["kvm01", "kvm02"]
MGMT = "mgmt01"
ALL = [MGMT, *HYPERVISORS]
DOMAIN = "lab.kvmcluster.test"


@pytest.fixture(scope="module")
def mgmt_lab(lab):  # noqa: ARG001  (after the salt-ssh lab's tests)
    control.down()
    state = control.up(containers=2, management=1, backends=["ifupdown", "networkmanager"])
    yield Lab(state)
    control.down()


@pytest.fixture(scope="module")
def converged(mgmt_lab):
    predicted, _ = mgmt_lab.apply("kvmcluster", "test=True")
    t0 = time.monotonic()
    first, proc = mgmt_lab.apply()
    took = time.monotonic() - t0
    record_timing("salt-ssh state.apply, first run, management node + 2 container nodes", took)
    t0 = time.monotonic()
    second, _ = mgmt_lab.apply()
    record_timing("salt-ssh state.apply, second run, management node + 2 container nodes",
                  time.monotonic() - t0)
    return predicted, first, second, proc


def test_one_apply_converges_and_test_mode_said_so(converged):
    predicted, first, second, proc = converged
    assert set(first) == set(ALL), proc.stdout[-2000:]
    for n in ALL:
        assert summarize(first[n])["failed"] == 0, (n, summarize(first[n])["failures"])
        for key, real in first[n].items():
            assert predicted[n][key]["changes"] == real["changes"], (n, key)
        assert summarize(second[n])["changed"] == 0, (n, summarize(second[n])["changed_ids"])
    dns = next(v for k, v in first[MGMT].items() if "kvmcluster-dns-served" in k)
    assert set(dns["changes"]) >= {"packages", "/etc/dnsmasq.d/kvmcluster.conf",
                                   "/etc/kvmcluster/dnsmasq/hosts", "service"}
    shown = json.dumps(predicted[MGMT][next(k for k in predicted[MGMT]
                                            if "kvmcluster-dns-served" in k)]["changes"]
                       ["/etc/kvmcluster/dnsmasq/hosts"], indent=1)
    show(f"test=True on {MGMT}: the records dnsmasq would serve", shown)


def test_management_node_is_no_hypervisor(mgmt_lab, converged):
    out = mgmt_lab.ssh(MGMT, "dpkg -l qemu-system-x86 libvirt-daemon-system 2>&1 | grep ^ii "
                             "|| echo none; ip -br -4 addr show dev eth0; ls /sys/class/net")
    assert "none" in out, out
    assert "172.30.10.12/24" in out and "br0" not in out.split()
    ids = {k.split("_|-")[1]: v for k, v in converged[1][MGMT].items()}
    for sid in ("kvmcluster-prereqs-pkgs-installed", "kvmcluster-storage-primary-pool-present",
                "kvmcluster-network-bridge-managed"):
        assert ids[sid]["changes"] == {}, ids[sid]
        assert "management node" in ids[sid]["comment"], ids[sid]["comment"]


def test_dnsmasq_listens_on_the_model_addresses_only(mgmt_lab, converged):  # noqa: ARG001
    out = mgmt_lab.ssh(MGMT, "ss -H -lnpt -u 'sport = :53'")
    show(f"ss -lnptu on {MGMT}, port 53", out)
    local = sorted({ln.split()[4] for ln in out.splitlines()})
    assert local == ["172.30.10.12:53", "[fd00:30:10::12]:53"], out
    assert all("dnsmasq" in ln for ln in out.splitlines())
    assert "dnsmasq" in mgmt_lab.ssh(MGMT, "ss -H -lnpu 'sport = :67'")  # DHCP


def test_nodes_resolve_through_the_management_node(mgmt_lab, converged):  # noqa: ARG001
    for n, peer in (("kvm01", "kvm02"), ("kvm02", "kvm01")):
        assert mgmt_lab.ssh(n, "grep ^nameserver /etc/resolv.conf").split() == [
            "nameserver", "172.30.10.12"]
        assert peer not in mgmt_lab.ssh(n, "cat /etc/hosts")  # not from /etc/hosts
        ip = mgmt_lab.ip[peer]
        fwd = mgmt_lab.ssh(n, f"getent ahostsv4 {peer}.{DOMAIN} | head -1").split()
        assert fwd[0] == ip, fwd
        rev = mgmt_lab.ssh(n, f"getent hosts {ip}").split()
        assert rev[:2] == [ip, f"{peer}.{DOMAIN}"], rev
        six = mgmt_lab.ssh(n, f"getent ahostsv6 {peer}.{DOMAIN} | head -1").split()
        assert six[0] == net.ip6_of(ip), six
        assert mgmt_lab.ssh(n, f"getent hosts labgw.{DOMAIN}").split()[0] == net.GATEWAY
        show(f"resolved on {n} through {MGMT}",
             f"{peer}.{DOMAIN} -> {fwd[0]}, {six[0]}; {ip} -> {rev[1]}")


def test_guest_gets_its_static_lease_from_the_management_node(mgmt_lab, converged):  # noqa: ARG001
    node = "kvm01"
    boot = "/var/lib/libvirt/boot"
    mgmt_lab.ssh(node, f"mkdir -p {boot} && cp /boot/vmlinuz-*-amd64 {boot}/dhcp-vmlinuz")
    mgmt_lab.ssh(node, f"base64 -d > {boot}/dhcp-initrd",
                 input=base64.b64encode(guest.dhcp_initrd()).decode())
    console = "/var/log/libvirt/qemu/tiny-dhcp-console.log"
    xml = guest.dhcp_domain_xml("tiny-dhcp", saltcfg.TINY_MAC, "br0", f"{boot}/dhcp-vmlinuz",
                                f"{boot}/dhcp-initrd", console)
    out = json.loads(mgmt_lab.ssh(node, "python3 -c " + shlex.quote(guest.BOOT_PY),
                                  timeout=300, input=json.dumps({
                                      "xml": xml, "console": console, "marker": guest.MARKER,
                                      "remove": True})))
    lease = next((ln for ln in out["console"].splitlines()
                  if ln.startswith(guest.LEASE_MARKER)), None)
    show(f"DHCP guest on {node} (console, {out['seconds']} s after start)", lease)
    assert lease is not None, out["console"]
    fields = dict(f.split("=", 1) for f in lease.split()[1:] if "=" in f)
    assert fields["ip"] == "172.30.10.101" and fields["name"] == "tiny-dhcp", lease
    assert fields["serverid"] == "172.30.10.12" and fields["router"] == net.GATEWAY, lease
    assert fields["domain"] == DOMAIN and fields["dns"] == "172.30.10.12", lease
    record_timing("tiny guest DHCP lease from the management node (boot to lease)",
                  out["seconds"])


def test_new_record_answers_with_the_same_dnsmasq_and_no_gap(mgmt_lab, converged):  # noqa: ARG001
    pid = mgmt_lab.ssh(MGMT, "systemctl show -p MainPID --value dnsmasq").strip()
    # 400 lookups, 0.1 s apart (bounded: about a minute), while the apply runs.
    loop = (f"for i in $(seq 1 400); do getent hosts kvm01.{DOMAIN} >/dev/null || "
            "echo FAIL $i; sleep 0.1; done > /tmp/dns-loop.log 2>&1; echo DONE >> "
            "/tmp/dns-loop.log")
    mgmt_lab.ssh("kvm02", f"rm -f /tmp/dns-loop.log; nohup sh -c {shlex.quote(loop)} "
                          ">/dev/null 2>&1 &")
    pillar = json.loads(json.dumps(mgmt_lab.pillar))
    pillar["kvmcluster"]["dns"]["records"]["www2"] = "172.30.10.80"
    mgmt_lab.set_pillar(pillar)
    try:
        results, _ = mgmt_lab.apply_on(MGMT)
    finally:
        mgmt_lab.reset_pillar()
    dns = next(v for k, v in results[MGMT].items() if "kvmcluster-dns-served" in k)
    assert dns["changes"] == {"/etc/kvmcluster/dnsmasq/hosts": {
        "old": [], "new": [f"172.30.10.80 www2.{DOMAIN} www2"]}}, dns
    assert "SIGHUP" in dns["comment"]
    assert mgmt_lab.ssh(MGMT, "systemctl show -p MainPID --value dnsmasq").strip() == pid
    assert mgmt_lab.ssh("kvm02", f"getent hosts www2.{DOMAIN}").split()[0] == "172.30.10.80"
    deadline = time.monotonic() + 120
    log = ""
    while time.monotonic() < deadline:
        log = mgmt_lab.ssh("kvm02", "cat /tmp/dns-loop.log 2>/dev/null || true")
        if "DONE" in log:
            break
        time.sleep(2)
    assert "DONE" in log and "FAIL" not in log, log[-500:]
    mgmt_lab.apply_on(MGMT)  # back to the lab's pillar


def account_ssh(ip, command):
    argv = ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
            "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"kvmadmin@{ip}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


NOLOGIN_WHY = ("ls -l --time-style=+%T /run/nologin /etc/nologin 2>&1; uptime; "
               "systemctl is-system-running; systemctl list-jobs --no-pager | head; "
               "journalctl -b --no-pager -o short-monotonic -u systemd-tmpfiles-setup "
               "-u systemd-user-sessions | tail -8")


def login_as_account(lab, node, command):
    """The account's login; a node still "booting up" (pam_nologin; seen once in CI on a
    container node long after it had booted) is shown with what it was doing, and given
    systemd's own wait (bounded) before one more try."""
    res = account_ssh(lab.ip[node], command)
    if res.returncode == 255 and "booting up" in res.stderr:
        show(f"{node} refused a login as booting up", lab.ssh(node, NOLOGIN_WHY))
        lab.ssh(node, "timeout 120 systemctl is-system-running --wait || true", timeout=150)
        res = account_ssh(lab.ip[node], command)
    return res


def test_account_has_passwordless_sudo_on_every_node(mgmt_lab, converged):  # noqa: ARG001
    for n in ALL:
        res = login_as_account(mgmt_lab, n, "sudo -n true && sudo -n id -u")
        assert res.returncode == 0 and res.stdout.strip() == "0", (n, res.stderr)
        mode = mgmt_lab.ssh(n, "stat -c '%a %U' /etc/sudoers.d/kvmcluster").strip()
        assert mode == "440 root", (n, mode)


SUDOERS_PY = r"""
import importlib.util, subprocess, sys, types
spec = importlib.util.spec_from_file_location("acct", "/tmp/kvmcluster_account.py")
acct = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acct)
def run_all(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True)
    return {"retcode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
class Refused(Exception):
    pass
acct.__salt__ = {"cmd.run_all": run_all}
acct.__utils__ = {"kvmcluster_state.skeleton": lambda: types.SimpleNamespace(Refused=Refused)}
before = open("/etc/sudoers.d/kvmcluster").read()
try:
    acct._install_sudoers("kvmadmin ALL=(ALL:ALL NOPASSWD ALL\n")
    print("INSTALLED")
except Refused as exc:
    print("REFUSED", exc)
print("SAME" if open("/etc/sudoers.d/kvmcluster").read() == before else "CHANGED")
"""


def test_sudoers_that_fails_visudo_is_refused_and_the_old_file_stays(mgmt_lab, converged):  # noqa: ARG001
    node = "kvm01"
    src = (paths.REPO_ROOT / "_states/kvmcluster_account.py").read_text()
    mgmt_lab.ssh(node, "cat > /tmp/kvmcluster_account.py", input=src)
    out = mgmt_lab.ssh(node, "python3 -", input=SUDOERS_PY)
    assert out.split()[0] == "REFUSED" and out.split()[-1] == "SAME", out
    assert "visudo refuses" in out
    assert account_ssh(mgmt_lab.ip[node], "sudo -n true").returncode == 0
    left = [f for f in mgmt_lab.ssh(node, "ls -a /etc/sudoers.d").split()
            if f.startswith(".kvmcluster.kvmcluster-")]
    assert left == []  # no temporary file left behind


def test_an_account_removed_from_pillar_loses_sudo_and_keys(mgmt_lab, converged):  # noqa: ARG001
    """Revocation revokes: with the account gone from pillar, one apply removes the sudoers
    file and the formula's keys on every node (the account itself stays); the login with
    the removed key is refused. Then the lab's pillar again."""
    pillar = copy.deepcopy(mgmt_lab.pillar)
    del pillar["kvmcluster"]["account"]
    # Migration over SSH logs in to the account: it goes with it (validation says so).
    pillar["kvmcluster"]["migration"].pop("ssh", None)
    mgmt_lab.set_pillar(pillar)
    try:
        results, proc = mgmt_lab.apply()
        for n in ALL:
            assert summarize(results[n])["failed"] == 0, (n, summarize(results[n])["failures"])
            acct = next(v for k, v in results[n].items() if "account-present" in k)
            assert "revoked:kvmadmin" in acct["changes"], acct
            left = mgmt_lab.ssh(n, "ls /etc/sudoers.d/kvmcluster 2>&1; grep -c 'BEGIN "
                                   "kvmcluster' ~kvmadmin/.ssh/authorized_keys; id -u kvmadmin",
                                check=False)
            assert "No such file" in left and left.split()[-2:][0] == "0", (n, left)
            assert account_ssh(mgmt_lab.ip[n], "true").returncode == 255, n
        show("account removed from pillar: what the apply revoked on kvm01",
             json.dumps(next(v for k, v in results["kvm01"].items()
                             if "account-present" in k)["changes"], indent=1))
    finally:
        mgmt_lab.reset_pillar()
        back, _ = mgmt_lab.apply()
    for n in ALL:
        assert summarize(back[n])["failed"] == 0, (n, summarize(back[n])["failures"])
        assert login_as_account(mgmt_lab, n, "sudo -n true").returncode == 0, n


def test_roster_from_the_model_reaches_every_node_as_the_account(mgmt_lab, converged, tmp_path):  # noqa: ARG001
    subprocess.run(saltcfg.salt_call_argv("saltutil.sync_modules"), capture_output=True,
                   timeout=300, check=True)
    res = subprocess.run(saltcfg.salt_call_argv("kvmcluster_model.roster",
                                                f"priv={paths.SSH_KEY}", "--out=json"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    roster = json.loads(res.stdout)["local"]
    assert sorted(roster) == sorted(ALL)
    assert roster["kvm02"]["host"] == "172.30.10.42" and roster["kvm02"]["user"] == "kvmadmin"
    for entry in roster.values():
        # The roster's connection reuse, with the lab's throwaway host keys.
        assert "ControlMaster=auto" in entry["ssh_options"], entry
        entry["ssh_options"] += ["UserKnownHostsFile=/dev/null", "StrictHostKeyChecking=no"]
    path = tmp_path / "roster"
    path.write_text(json.dumps(roster))
    for n in ALL:  # each node takes the account's login (see login_as_account)
        assert login_as_account(mgmt_lab, n, "true").returncode == 0, n
    proc = saltcfg.salt_ssh(f"--roster-file={path}", "*", "cmd.run", "id -u", "--out=json",
                            "--static", timeout=600)
    got = json.loads(proc.stdout or "{}")
    assert {n: str(v).strip() for n, v in got.items()} == {n: "0" for n in ALL}, proc.stdout
