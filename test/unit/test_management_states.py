"""The management node's states against a simulated node: dnsmasq's files and reloads,
and the account's keys and sudoers (visudo is the real one where this machine has it)."""
import copy
import os

import pytest

from kvmtestlib import (SEED_PILLAR, fake_pubkey, formula_values, load_module, utils_dunder,
                        visudo_run_all)

model = load_module("_modules", "kvmcluster_model")
dns_mod = load_module("_modules", "kvmcluster_dns")
dns_state = load_module("_states", "kvmcluster_dns")
account = load_module("_states", "kvmcluster_account")
UTILS = utils_dunder()

BUILT, ERRORS = model.build(SEED_PILLAR["kvmcluster"], formula_values()["cluster"])
assert not ERRORS, ERRORS


def view(node, pillar_edit=None):
    if pillar_edit:
        p = copy.deepcopy(SEED_PILLAR["kvmcluster"])
        pillar_edit(p)
        built, errors = model.build(p, formula_values()["cluster"])
        assert not errors, errors
        return model.node_view(built, node)
    return copy.deepcopy(model.node_view(BUILT, node))


def test_dnsmasq_conf_listens_on_the_node_only_and_serves_the_model():
    conf = dns_mod.conf_text(view("mgmt01"))
    lines = conf.splitlines()
    assert "bind-interfaces" in lines and "listen-address=172.30.10.11" in lines
    assert [ln for ln in lines if ln.startswith("listen-address=")] == ["listen-address=172.30.10.11"]
    assert not any(ln.startswith(("interface=", "except-interface")) for ln in lines)
    for must in ("no-resolv", "no-hosts", "domain=cluster.example.com",
                 "local=/cluster.example.com/", "server=192.0.2.53",
                 "dhcp-range=172.30.10.200,172.30.10.249,255.255.255.0,12h",
                 "dhcp-range=172.30.10.0,static,255.255.255.0,12h",
                 "dhcp-option=option:router,172.30.10.1",
                 "dhcp-option=option:dns-server,172.30.10.11,172.30.10.12",
                 "addn-hosts=/etc/kvmcluster/dnsmasq/hosts",
                 "dhcp-hostsfile=/etc/kvmcluster/dnsmasq/dhcp-hosts"):
        assert must in lines, must
    # The second management node serves the same names and leases, not the dynamic pool.
    conf2 = dns_mod.conf_text(view("mgmt02")).splitlines()
    assert "listen-address=172.30.10.12" in conf2
    assert "dhcp-range=172.30.10.200,172.30.10.249,255.255.255.0,12h" not in conf2
    assert "dhcp-range=172.30.10.0,static,255.255.255.0,12h" in conf2


def test_hosts_and_leases_come_from_the_model():
    v = view("mgmt01")
    hosts = dns_mod.hosts_lines(v)
    assert "172.30.10.42 kvm02.cluster.example.com kvm02" in hosts
    assert "172.30.10.1 gateway.cluster.example.com gateway" in hosts
    assert "172.30.10.101 golden-builder.cluster.example.com golden-builder" in hosts
    # VMs: a static lease and a name each; one without an address gets its name only.
    assert "172.30.10.111 web1.cluster.example.com web1" in hosts
    mac = v["vms"]["web1"]["mac"]
    assert mac == model.vm_mac("cluster.example.com", "web1") and mac.startswith("52:54:00:")
    assert dns_mod.dhcp_host_lines(v) == [
        "52:54:00:10:00:01,172.30.10.101,golden-builder",
        f"{v['vms']['db1']['mac']},172.30.10.112,db1",
        f"{v['vms']['scratch1']['mac']},scratch1",
        f"{mac},172.30.10.111,web1"]
    assert not any(" scratch1" in h for h in hosts)
    assert dns_mod.hosts_lines(view("mgmt02")) == hosts  # identical data on both


class Dnsmasq:
    """A management node: files, the dnsmasq unit, its PID, its listening sockets."""

    def __init__(self, installed=True, active=True):
        self.files, self.installed, self.active = {}, installed, active
        self.pid, self.restarts, self.hups = 100, 0, 0
        self.listen, self.tested = [], []

    def systemctl(self, *args, check=True):
        if args[0] == "restart":
            self.pid += 1
            self.restarts += 1
            self.active = True
        return {"retcode": 0, "stdout": "", "stderr": ""}

    def reload(self, service):
        self.hups += 1

    def check_conf(self, text):
        self.tested.append(text)
        if "refuse-me" in text:
            raise dns_mod.CommandExecutionError("dnsmasq refuses the new configuration, which "
                                                "is not installed: bad option")
        return True

    def unit(self, unit):
        on = self.installed and self.active
        return {"exists": self.installed, "enabled": "enabled" if self.installed else "",
                "active": on, "label": "enabled/active" if on else "disabled/inactive"}

    def salt(self, v):
        def version(*names):
            got = {n: "2.89-1" if self.installed else "" for n in names}
            return got[names[0]] if len(names) == 1 else got

        def install(pkgs, refresh=True):
            self.installed = True
            self.active = True

        return {"kvmcluster_model.current": lambda: v,
                "kvmcluster_dns.conf_text": dns_mod.conf_text,
                "kvmcluster_dns.hosts_lines": dns_mod.hosts_lines,
                "kvmcluster_dns.dhcp_host_lines": dns_mod.dhcp_host_lines,
                "kvmcluster_dns.listening": lambda port=53: list(self.listen_now(v)),
                "kvmcluster_dns.reload": self.reload, "kvmcluster_dns.ensure_dir": lambda: None,
                "kvmcluster_dns.check_conf": self.check_conf,
                "kvmcluster_dns.files": dns_mod.files,
                "kvmcluster_dns.addresses": dns_mod.addresses,
                "kvmcluster_node.file_text": self.files.get,
                "kvmcluster_node.write_file": self.files.__setitem__,
                "kvmcluster_node.systemctl": self.systemctl,
                "kvmcluster_node.unit_state": self.unit,
                "pkg.version": version, "pkg.install": install,
                "pkg.latest_version": lambda *n, refresh=True: "2.89-1"}

    def listen_now(self, v):
        # Bound where the drop-in says once running with it.
        conf = self.files.get(dns_mod.CONF) or ""
        if not (self.installed and self.active):
            return []
        return [ln.split("=", 1)[1] for ln in conf.splitlines()
                if ln.startswith("listen-address=")] or ["0.0.0.0"]


def run_dns(node, v, test):
    dns_state.__salt__ = node.salt(v)
    dns_state.__opts__ = {"test": test}
    dns_state.__utils__ = UTILS
    return dns_state.served("dns", packages=["dnsmasq"])


def test_a_drop_in_dnsmasq_refuses_is_never_installed(monkeypatch):
    v = view("mgmt01")
    node = Dnsmasq()
    assert run_dns(node, v, False)["result"] is True
    before, restarts = dict(node.files), node.restarts
    assert node.tested and "dhcp-ignore-names" in node.tested[-1]
    monkeypatch.setattr(dns_mod, "HEADER", dns_mod.HEADER + "\nrefuse-me")
    ret = run_dns(node, v, False)
    assert ret["result"] is False and "dnsmasq refuses" in ret["comment"]
    assert node.files == before and node.restarts == restarts


def test_fresh_management_node_test_equals_real_then_nothing():
    v = view("mgmt01")
    predicted = run_dns(Dnsmasq(installed=False, active=False), v, True)
    node = Dnsmasq(installed=False, active=False)
    real = run_dns(node, v, False)
    assert predicted["result"] is None and real["result"] is True, real["comment"]
    assert predicted["changes"] == real["changes"]
    assert node.restarts == 1 and node.hups == 0
    again = run_dns(node, v, False)
    assert again["result"] is True and again["changes"] == {}


def test_a_new_record_is_a_sighup_with_the_same_pid():
    node = Dnsmasq()
    run_dns(node, view("mgmt01"), False)
    pid, restarts = node.pid, node.restarts
    v2 = view("mgmt01", lambda p: p["dns"]["records"].update({"www": "172.30.10.80"}))
    predicted = run_dns(node, v2, True)
    real = run_dns(node, v2, False)
    assert predicted["changes"] == real["changes"] == {dns_mod.HOSTS: {
        "old": [], "new": ["172.30.10.80 www.cluster.example.com www"]}}
    assert node.pid == pid and node.restarts == restarts and node.hups == 1
    assert "SIGHUP" in real["comment"]


def test_a_drop_in_change_restarts():
    node = Dnsmasq()
    run_dns(node, view("mgmt01"), False)
    v2 = view("mgmt01", lambda p: p["dns"].update({"upstream": ["192.0.2.54"]}))
    real = run_dns(node, v2, False)
    assert set(real["changes"]) == {dns_mod.CONF} and node.restarts == 2


def test_listening_on_the_wildcard_fails():
    node = Dnsmasq()
    run_dns(node, view("mgmt01"), False)
    node.listen_now = lambda v: ["0.0.0.0", "172.30.10.11"]
    node.files[dns_mod.HOSTS] = ""  # something to do, then verify
    ret = run_dns(node, view("mgmt01"), False)
    assert ret["result"] is False and "listening" in ret["comment"]


def test_not_a_management_node_does_nothing():
    ret = run_dns(Dnsmasq(), view("kvm02"), False)
    assert ret["result"] is True and ret["changes"] == {}


# ---- sudoers and keys ------------------------------------------------------------------



def test_sudoers_refused_by_visudo_is_never_installed(tmp_path, monkeypatch):
    target = tmp_path / "kvmcluster"
    target.write_text("kvmadmin ALL=(ALL:ALL) NOPASSWD: ALL\n")
    monkeypatch.setattr(account.os, "chown", lambda *a, **k: None)
    account.__salt__ = {"cmd.run_all": visudo_run_all}
    account.__utils__ = UTILS
    with pytest.raises(Exception, match="visudo refuses"):
        account._install_sudoers("kvmadmin ALL=(ALL:ALL NOPASSWD ALL\n", path=str(target))
    assert target.read_text() == "kvmadmin ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert sorted(os.listdir(tmp_path)) == ["kvmcluster"]  # no temporary left behind
    account._install_sudoers(account._sudoers_text("ops"), path=str(target))
    assert "ops ALL=(ALL:ALL) NOPASSWD: ALL" in target.read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o440"


KEY_A = fake_pubkey("A", comment="a@x")
KEY_B = fake_pubkey("B", comment="b@x")
SITE = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC site@host"


def test_keys_removed_from_pillar_leave_the_node_site_keys_stay():
    first = account._keys_text(SITE + "\n", [KEY_A, KEY_B])
    assert first.splitlines() == [SITE, account.BEGIN, KEY_A, KEY_B, account.END]
    second = account._keys_text(first, [KEY_B])
    assert second.splitlines() == [SITE, account.BEGIN, KEY_B, account.END]
    assert account._keys_text(second, []) == SITE + "\n"
    # A model key appended by an older run (outside the block) moves into it, once.
    migrated = account._keys_text(SITE + "\n" + KEY_A + "\n", [KEY_A])
    assert migrated.splitlines() == [SITE, account.BEGIN, KEY_A, account.END]
    assert account._keys_text(migrated, [KEY_A]) == migrated


SS_OUT = """udp UNCONN 0      0          172.30.10.12:53 0.0.0.0:* users:(("dnsmasq",pid=724,fd=6))
udp UNCONN 0      0      [fd00:30:10::12]:53    [::]:* users:(("dnsmasq",pid=724,fd=8))
tcp LISTEN 0      32         172.30.10.12:53 0.0.0.0:* users:(("dnsmasq",pid=724,fd=7))
tcp LISTEN 0      32     [fe80::1%br0]:53    [::]:* users:(("dnsmasq",pid=724,fd=9))
"""


def test_listening_addresses_from_ss():
    # Recorded on the lab's management node (iproute2 6.1).
    seen = []
    dns_mod.__salt__ = {"cmd.run_all": lambda argv, **kw: seen.append(argv) or {
        "retcode": 0, "stdout": SS_OUT, "stderr": ""}}
    assert dns_mod.listening(53) == ["172.30.10.12", "fd00:30:10::12", "fe80::1"]
    assert seen == [["ss", "-H", "-l", "-n", "-t", "-u", "sport = :53"]]
