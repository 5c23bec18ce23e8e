"""Firewall, MAC policy, packages and the libvirt binding: states against recorded command
output (firewall-cmd on Debian 12, semanage/restorecon/getsebool on Rocky 9). Compliant
means no changes; test=True reports exactly the real run's changes."""
import copy
import os
import sys
import types

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module, utils_dunder

model = load_module("_modules", "kvmcluster_model")
fw_mod = load_module("_modules", "kvmcluster_firewall")
fw_state = load_module("_states", "kvmcluster_firewall")
security = load_module("_states", "kvmcluster_security")
packages = load_module("_states", "kvmcluster_packages")
lv_state = load_module("_states", "kvmcluster_libvirt")
UTILS = utils_dunder()

PILLAR = copy.deepcopy(SEED_PILLAR["kvmcluster"])
PILLAR["storage"] = {"secondary": {"enabled": True, "server": "kvm01"}}
BUILT, ERRORS = model.build(PILLAR, formula_values()["cluster"])
assert not ERRORS, ERRORS


def view(node, **over):
    v = copy.deepcopy(model.node_view(BUILT, node))
    for k, val in over.items():
        v[k] = val
    return v


# ---- firewalld ------------------------------------------------------------------------

def test_rule_spelling_is_firewalld_s_own():
    # As `firewall-cmd --list-rich-rules` prints them (recorded on Debian 12, firewalld 1.3).
    assert fw_mod.rule("172.30.10.42", service="nfs") == \
        'rule family="ipv4" source address="172.30.10.42" service name="nfs" accept'
    assert fw_mod.rule("fd00:30:10::42", port="49152-49215") == \
        'rule family="ipv6" source address="fd00:30:10::42" port port="49152-49215" ' \
        'protocol="tcp" accept'
    assert fw_mod.rule("172.30.10.0/24", service="mountd") == \
        'rule family="ipv4" source address="172.30.10.0/24" service name="mountd" accept'


def test_nfs_server_opens_nfs_to_its_clients_only():
    want = fw_mod.wanted(view("kvm01"))
    nfs = [r for r in want if 'service name="nfs"' in r]
    assert sorted(nfs) == sorted(fw_mod.rule(c, service="nfs")
                                 for c in BUILT["storage"]["secondary"]["clients"])
    assert any('service name="rpc-bind"' in r for r in want)
    assert any('service name="mountd"' in r for r in want)
    # A client opens no NFS; every hypervisor opens migration to the other nodes.
    client = fw_mod.wanted(view("kvm02"))
    assert not any("nfs" in r or "mountd" in r for r in client)
    # Migration ports from the peers' addresses on the migration network, not their own.
    assert fw_mod.rule("172.30.20.41", port="49152-49215") in client
    assert fw_mod.rule("172.30.10.41", port="49152-49215") not in client
    assert not any('"172.30.10.42"' in r for r in client)  # never itself
    assert not any("libvirt-tls" in r for r in client)


def test_tls_opens_libvirt_tls_and_migration_can_be_off():
    v = view("kvm02")
    v["libvirt"]["tls"]["enabled"] = True
    v["migration"]["enabled"] = False
    want = fw_mod.wanted(v)
    assert fw_mod.rule("172.30.10.41", service="libvirt-tls") in want
    assert not any("49152" in r for r in want)


class Firewalld:
    """firewall-cmd, as a dict of zones: runtime and permanent rich rules."""

    def __init__(self, runtime=(), permanent=(), running=True):
        self.rules = {False: set(runtime), True: set(permanent)}
        self.running, self.owned, self.calls = running, {}, []

    def salt(self, v):
        return {
            "kvmcluster_model.current": lambda: v,
            "kvmcluster_firewall.running": lambda: self.running,
            "kvmcluster_firewall.zone_of": lambda iface: "public",
            "kvmcluster_firewall.wanted": fw_mod.wanted,
            "kvmcluster_firewall.owned": lambda: copy.deepcopy(self.owned),
            "kvmcluster_firewall.set_owned": self.set_owned,
            "kvmcluster_firewall.rich_rules": lambda zone, permanent=False:
                sorted(self.rules[bool(permanent)]),
            "kvmcluster_firewall.change": self.change,
            "network.interfaces": lambda: {"br0": {"inet": [{"address": v["self"]["ip"]}]}},
        }

    def set_owned(self, data):
        self.owned = copy.deepcopy(data)

    def change(self, zone, add=(), remove=()):
        self.calls.append((zone, sorted(add), sorted(remove)))
        for scope in (False, True):
            self.rules[scope] |= set(add)
            self.rules[scope] -= set(remove)


def run_fw(fwd, v, test):
    fw_state.__salt__ = fwd.salt(v)
    fw_state.__opts__ = {"test": test}
    fw_state.__utils__ = UTILS
    return fw_state.managed("firewalld")


def test_firewall_converges_test_equals_real_then_no_changes():
    site_rule = 'rule family="ipv4" source address="10.0.0.9" service name="ssh" accept'
    v = view("kvm01")
    fwd = Firewalld(runtime=[site_rule], permanent=[site_rule])
    predicted = run_fw(fwd, v, True)
    assert fwd.calls == []
    real = run_fw(fwd, v, False)
    assert predicted["result"] is None and real["result"] is True, real
    assert predicted["changes"] == real["changes"]
    assert set(real["changes"]) == {"public:runtime", "public:permanent"}
    want = sorted(fw_mod.wanted(v))
    assert real["changes"]["public:permanent"] == {"old": [], "new": want}
    assert fwd.rules[True] == set(want) | {site_rule}   # the site's rule stays
    again = run_fw(fwd, v, False)
    assert again["result"] is True and again["changes"] == {}


def test_a_rule_the_model_drops_is_removed_a_site_rule_is_not():
    v = view("kvm01")
    fwd = Firewalld()
    run_fw(fwd, v, False)
    gone = fw_mod.rule("172.30.10.43", service="nfs")
    assert gone in fwd.rules[True]
    v2 = copy.deepcopy(v)
    v2["storage"]["secondary"]["clients"] = [c for c in v["storage"]["secondary"]["clients"]
                                             if c != "172.30.10.43"]
    site = fw_mod.rule("172.30.10.99", service="nfs")  # same shape, added by the site
    fwd.rules[True].add(site)
    fwd.rules[False].add(site)
    ret = run_fw(fwd, v2, False)
    assert ret["result"] is True
    assert gone in ret["changes"]["public:permanent"]["old"]
    assert gone not in fwd.rules[True] and gone not in fwd.rules[False]
    assert site in fwd.rules[True]
    assert run_fw(fwd, v2, False)["changes"] == {}


def test_no_firewalld_no_change():
    fwd = Firewalld(running=False)
    ret = run_fw(fwd, view("kvm01"), False)
    assert ret["result"] is True and ret["changes"] == {} and "does not run" in ret["comment"]


def test_runtime_lost_on_reload_is_restored_permanent_kept():
    v = view("kvm02")
    fwd = Firewalld()
    run_fw(fwd, v, False)
    fwd.rules[False] = set()  # `firewall-cmd --reload` of a half-written config, say
    ret = run_fw(fwd, v, False)
    assert set(ret["changes"]) == {"public:runtime"}
    assert fwd.rules[False] == set(fw_mod.wanted(v))


# ---- SELinux (recorded on Rocky 9) -------------------------------------------------------

FCONTEXT_LIST = """SELinux fcontext                                   type               Context

/data01/primary(/.*)?                              all files          system_u:object_r:virt_image_t:s0
"""
RESTORECON_DIFF = ("Would relabel /data01/primary/vm1.qcow2 from "
                   "unconfined_u:object_r:default_t:s0 to "
                   "unconfined_u:object_r:virt_image_t:s0\n")


class SELinuxHost:
    def __init__(self, rules="", labels_differ=False, nfs_bool="off", have_tools=True,
                 nfs_mounts=("/mnt/secondary",), unlabelled=("/mnt/secondary",)):
        self.rules, self.labels_differ, self.nfs_bool = rules, labels_differ, nfs_bool
        self.have_tools, self.ran, self.nfs_mounts = have_tools, [], nfs_mounts
        # Paths whose files restorecon would relabel (on NFS: always, it has no labels).
        self.unlabelled = list(unlabelled)

    def mount_of(self, path):
        return {"source": "172.30.10.41:/data01/secondary", "fstype": "nfs4",
                "options": ["rw"]} if path in self.nfs_mounts else None

    def run_all(self, argv, **_kw):
        self.ran.append(argv)
        out = ""
        if argv[:3] == ["semanage", "fcontext", "--list"]:
            out = self.rules
        elif argv[:2] == ["semanage", "fcontext"]:
            self.rules += f"{argv[-1]}   all files   system_u:object_r:virt_image_t:s0\n"
        elif argv[0] == "restorecon" and "-n" in argv:
            out = RESTORECON_DIFF if (self.labels_differ and "primary" in argv[-1]) or \
                argv[-1] in self.unlabelled else ""
        elif argv[0] == "restorecon":
            self.labels_differ = False
            if argv[-1] not in self.nfs_mounts and argv[-1] in self.unlabelled:
                self.unlabelled.remove(argv[-1])
        elif argv[0] == "getsebool":
            out = f"virt_use_nfs --> {self.nfs_bool}\n"
        elif argv[0] == "setsebool":
            self.nfs_bool = "on"
        return {"retcode": 0, "stdout": out, "stderr": ""}

    def salt(self, v):
        tools = {"policycoreutils-python-utils": "3.5-1.el9" if self.have_tools else ""}

        def version(*names):
            got = {n: tools.get(n, "") for n in names}
            return got[names[0]] if len(names) == 1 else got

        def install(pkgs, refresh=True):
            self.have_tools = True
            tools.update({p: "3.5-1.el9" for p in pkgs})

        return {"kvmcluster_model.current": lambda: v, "cmd.run_all": self.run_all,
                "kvmcluster_nfs.mount_of": self.mount_of,
                "pkg.version": version, "pkg.install": install,
                "pkg.latest_version": lambda *n, refresh=True: "3.5-1.el9"}


def run_se(host, v, test, monkeypatch, tmp_path):
    monkeypatch.setattr(security, "_selinux_mode", lambda: "enforcing")
    monkeypatch.setattr(security.os.path, "exists", lambda p: True)
    security.__salt__ = host.salt(v)
    security.__opts__ = {"test": test}
    security.__utils__ = UTILS
    return security.selinux_contexts("selinux", packages=["policycoreutils-python-utils"])


def test_selinux_fresh_el_installs_semanage_first_and_test_equals_real(monkeypatch, tmp_path):
    v = view("kvm02")
    predicted = run_se(SELinuxHost(have_tools=False), v, True, monkeypatch, tmp_path)
    host = SELinuxHost(have_tools=False)
    real = run_se(host, v, False, monkeypatch, tmp_path)
    assert predicted["result"] is None and real["result"] is True, real["comment"]
    assert predicted["changes"] == real["changes"]
    assert real["changes"]["packages"] == {"policycoreutils-python-utils":
                                           {"old": None, "new": "3.5-1.el9"}}
    assert real["changes"]["virt_use_nfs"] == {"old": "off", "new": "on"}
    # semanage only ran after the package that brings it.
    assert host.ran[0][0] != "semanage" or host.have_tools
    assert run_se(host, v, False, monkeypatch, tmp_path)["changes"] == {}


def test_selinux_relabels_when_labels_differ_even_with_the_rule_present(monkeypatch, tmp_path):
    v = view("kvm02")
    v["storage"]["secondary"]["enabled"] = False
    host = SELinuxHost(rules=FCONTEXT_LIST, labels_differ=True)
    ret = run_se(host, v, False, monkeypatch, tmp_path)
    assert ret["changes"] == {"labels:/data01/primary": {"old": "differ from policy",
                                                         "new": "virt_image_t"}}
    assert ["restorecon", "-R", "/data01/primary"] in host.ran
    assert run_se(host, v, False, monkeypatch, tmp_path)["changes"] == {}


def test_selinux_leaves_an_nfs_mounted_share_unlabelled_and_converges(monkeypatch, tmp_path):
    """On a client the share is NFS: its files are nfs_t whatever restorecon says, so the
    state neither relabels there nor reports it (virt_use_nfs opens it), and a second run
    changes nothing."""
    v = view("kvm02")
    both = FCONTEXT_LIST + ("/mnt/secondary(/.*)?                               all files"
                            "          system_u:object_r:virt_image_t:s0\n")
    host = SELinuxHost(rules=both, nfs_bool="on")
    ret = run_se(host, v, False, monkeypatch, tmp_path)
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert not any(a[0] == "restorecon" and "/mnt/secondary" in a for a in host.ran)
    # Where the share is not NFS (the server's bind mount of its export) it is relabelled.
    server = SELinuxHost(rules=both, nfs_bool="on", nfs_mounts=())
    ret = run_se(server, v, False, monkeypatch, tmp_path)
    assert ret["changes"] == {"labels:/mnt/secondary": {"old": "differ from policy",
                                                        "new": "virt_image_t"}}


def test_selinux_compliant_host_is_left_alone(monkeypatch, tmp_path):
    v = view("kvm02")
    v["storage"]["secondary"]["enabled"] = False
    host = SELinuxHost(rules=FCONTEXT_LIST)
    ret = run_se(host, v, False, monkeypatch, tmp_path)
    assert ret["result"] is True and ret["changes"] == {}
    assert not any(a[0] in ("setsebool", "restorecon") and "-n" not in a for a in host.ran)


# ---- AppArmor -------------------------------------------------------------------------

def run_aa(v, files, test, monkeypatch):
    monkeypatch.setattr(security, "_apparmor_active", lambda: True)

    def write(path, text):
        files[path] = text

    security.__salt__ = {"kvmcluster_model.current": lambda: v,
                         "kvmcluster_node.file_text": files.get,
                         "kvmcluster_node.write_file": write}
    security.__opts__ = {"test": test}
    security.__utils__ = UTILS
    return security.apparmor_paths("aa", path="/abs")


def test_apparmor_default_adds_no_global_rule_and_removes_an_old_one(monkeypatch):
    v = view("kvm02")
    files = {}
    assert run_aa(v, files, False, monkeypatch)["changes"] == {}
    assert files == {}
    old = "# site rule\n" + security._block(["/data01/primary"]) + "\n"
    files["/abs"] = old
    predicted = run_aa(v, dict(files), True, monkeypatch)
    real = run_aa(v, files, False, monkeypatch)
    assert predicted["changes"] == real["changes"] and real["result"] is True
    assert files["/abs"] == "# site rule\n"
    assert "rwk" not in files["/abs"]


def test_apparmor_opt_in_adds_the_block(monkeypatch):
    v = view("kvm02")
    v["libvirt"]["apparmor_pool_access"] = True
    files = {"/abs": "# site rule\n"}
    ret = run_aa(v, files, False, monkeypatch)
    assert ret["result"] is True and '"/data01/primary/**" rwk,' in files["/abs"]
    assert files["/abs"].startswith("# site rule\n")
    assert run_aa(v, files, False, monkeypatch)["changes"] == {}


# ---- packages and the binding -------------------------------------------------------------

class Pkgs:
    def __init__(self, have=()):
        self.have = {p: "1.0-1" for p in have}
        self.installed = []

    def version(self, *names):
        got = {n: self.have.get(n, "") for n in names}
        return got[names[0]] if len(names) == 1 else got

    def install(self, pkgs, refresh=True, **kw):
        self.installed.append((list(pkgs), kw))
        self.have.update({p: "1.0-1" for p in pkgs})
        # A real install reports dependencies too: never part of the state's changes.
        return {p: {"old": "", "new": "1.0-1"} for p in [*pkgs, "libdep1"]}

    def salt(self):
        return {"pkg.version": self.version, "pkg.install": self.install,
                "pkg.latest_version": lambda *n, refresh=True:
                    {x: "1.0-1" for x in n} if len(n) > 1 else "1.0-1"}


@pytest.mark.parametrize("family,recommends,kw", [("Debian", False, {"install_recommends": False}),
                                                 ("Debian", True, {"install_recommends": True}),
                                                 ("RedHat", False, {})])
def test_packages_test_equals_real_and_no_dependencies(family, recommends, kw):
    pk = Pkgs(have=["qemu-utils"])
    packages.__salt__, packages.__grains__ = pk.salt(), {"os_family": family}
    packages.__utils__ = UTILS
    packages.__opts__ = {"test": True}
    predicted = packages.installed("p", ["qemu-utils", "virtinst", "ovmf"], recommends)
    packages.__opts__ = {"test": False}
    real = packages.installed("p", ["qemu-utils", "virtinst", "ovmf"], recommends)
    assert predicted["result"] is None and real["result"] is True
    assert predicted["changes"] == real["changes"] == {
        "virtinst": {"old": None, "new": "1.0-1"}, "ovmf": {"old": None, "new": "1.0-1"}}
    assert pk.installed == [(["virtinst", "ovmf"], kw)]
    assert packages.installed("p", ["qemu-utils", "virtinst"], recommends)["changes"] == {}


def test_extra_packages_come_with_the_kvm_packages_on_hypervisors_only():
    pk = Pkgs(have=["qemu-utils"])
    v = view("kvm02")
    v["packages"] = {**v["packages"], "extra": ["virtinst", "qemu-utils"]}
    mgmt = view("kvm02", self={**v["self"], "hypervisor": False})
    mgmt["packages"] = v["packages"]
    packages.__grains__, packages.__utils__ = {"os_family": "Debian"}, UTILS
    packages.__opts__ = {"test": False}
    packages.__salt__ = {**pk.salt(), "kvmcluster_model.current": lambda: mgmt}
    assert packages.installed("p", ["qemu-utils"], hypervisor_only=True)["changes"] == {}
    assert pk.installed == []
    packages.__salt__ = {**pk.salt(), "kvmcluster_model.current": lambda: v}
    ret = packages.installed("p", ["qemu-utils"], hypervisor_only=True)
    assert ret["changes"] == {"virtinst": {"old": None, "new": "1.0-1"}}, ret
    assert [names for names, _ in pk.installed] == [["virtinst"]]


def test_binding_imported_in_process_needs_no_child(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", types.ModuleType("libvirt"))

    def run_all(argv, **_kw):
        raise AssertionError(f"no command on a converged node: {argv}")

    lv_state.__salt__ = {"cmd.run_all": run_all, "kvmcluster_model.current": lambda: view("kvm02")}
    lv_state.__utils__ = UTILS
    lv_state.__opts__ = {"test": False}
    ret = lv_state.python_binding("b")
    assert ret["result"] is True and ret["changes"] == {}, ret


def test_binding_is_built_into_a_virtualenv_minion(monkeypatch):
    # This process cannot import it (None in sys.modules makes the import fail).
    monkeypatch.setitem(sys.modules, "libvirt", None)
    pk = Pkgs(have=["libvirt0"])
    pk.have["libvirt0"] = "9.0.0-4+deb12u2"
    state = {"importable": False, "argv": None}

    def run_all(argv, **_kw):
        if argv[1:] == ["-c", "import libvirt"]:
            return {"retcode": 0 if state["importable"] else 1, "stdout": "", "stderr": ""}
        state["argv"], state["importable"] = argv, True
        return {"retcode": 0, "stdout": "Successfully installed", "stderr": ""}

    v = view("kvm02")
    v["libvirt_python"] = {"version": None, "index_url": None,
                           "find_links": "http://172.30.10.1:8080/python/"}
    monkeypatch.setattr(lv_state, "_pip_argv", lambda: ["/venv/bin/python", "-m", "pip",
                                                        "install"])
    lv_state.__salt__ = {**pk.salt(), "cmd.run_all": run_all,
                         "kvmcluster_model.current": lambda: v}
    lv_state.__utils__ = UTILS
    build = ["gcc", "pkg-config", "libvirt-dev", "python3-dev"]
    lv_state.__opts__ = {"test": True}
    predicted = lv_state.python_binding("b", build_pkgs=build)
    assert state["argv"] is None
    lv_state.__opts__ = {"test": False}
    real = lv_state.python_binding("b", build_pkgs=build)
    assert predicted["result"] is None and real["result"] is True, real["comment"]
    assert predicted["changes"] == real["changes"]
    assert real["changes"]["libvirt-python"] == {"old": None, "new": "9.0.0"}
    assert set(real["changes"]["packages"]) == set(build)
    assert state["argv"] == ["/venv/bin/python", "-m", "pip", "install", "--no-cache-dir",
                             "libvirt-python==9.0.0", "--find-links",
                             "http://172.30.10.1:8080/python/", "--no-index",
                             "--trusted-host", "172.30.10.1"]
    assert lv_state.python_binding("b", build_pkgs=build)["changes"] == {}


def test_binding_on_the_system_python_is_never_pip_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)
    monkeypatch.setattr(lv_state, "_pip_argv", lambda: None)
    lv_state.__salt__ = {"cmd.run_all": lambda argv, **kw: {"retcode": 1, "stdout": "",
                                                            "stderr": ""},
                         "kvmcluster_model.current": lambda: view("kvm02")}
    lv_state.__utils__ = UTILS
    lv_state.__opts__ = {"test": False}
    ret = lv_state.python_binding("b")
    assert ret["result"] is False and "python3-libvirt" in ret["comment"]


class FirewallCmd:
    """firewall-cmd's argv and output as recorded on Debian 12 (firewalld 1.3.0)."""

    def __init__(self):
        self.rules = {"runtime": set(), "permanent": set()}
        self.argvs = []

    def run_all(self, argv, **_kw):
        assert argv[0] == "firewall-cmd" and isinstance(argv, list)
        self.argvs.append(argv)
        scope = "permanent" if "--permanent" in argv else "runtime"
        last = argv[-1]
        out, code = "", 0
        if last == "--state":
            out = "running"
        elif last.startswith("--get-zone-of-interface="):
            out, code = ("", 2) if last.endswith("=eth0") else ("trusted", 0)
        elif last == "--get-default-zone":
            out = "public"
        elif last == "--list-rich-rules":
            out = "\n".join(sorted(self.rules[scope]))
        elif last.startswith("--add-rich-rule="):
            self.rules[scope].add(last.split("=", 1)[1])
            out = "success"
        elif last.startswith("--remove-rich-rule="):
            self.rules[scope].discard(last.split("=", 1)[1])
            out = "success"
        return {"retcode": code, "stdout": out, "stderr": ""}


def test_firewall_cmd_changes_runtime_and_permanent_without_reload():
    fc = FirewallCmd()
    fw_mod.__salt__ = {"cmd.run_all": fc.run_all, "cmd.has_exec": lambda c: True}
    assert fw_mod.running() is True
    assert fw_mod.zone_of("eth0") == "public"      # in no zone: the default zone
    assert fw_mod.zone_of("br0") == "trusted"
    r1, r2 = fw_mod.rule("172.30.10.42", service="nfs"), fw_mod.rule("172.30.10.43", service="nfs")
    fw_mod.change("public", add=[r1, r2])
    assert fc.rules == {"runtime": {r1, r2}, "permanent": {r1, r2}}
    fw_mod.change("public", remove=[r2])
    assert fw_mod.rich_rules("public") == [r1] == fw_mod.rich_rules("public", permanent=True)
    assert not any("--reload" in a for a in fc.argvs)
    assert all(a[1] == "--permanent" or a[1].startswith("--zone=") or len(a) == 2
               for a in fc.argvs)
    # Idempotent: adding what is there runs no add.
    n = len(fc.argvs)
    fw_mod.change("public", add=[r1])
    assert not any(a[-1].startswith("--add") for a in fc.argvs[n:])


@pytest.mark.parametrize("exe,prefix,base,salt_pip,expect", [
    # The system's Python (salt-ssh, distribution packages): never pip.
    ("/usr/bin/python3", "/usr", "/usr", False, None),
    # A virtualenv of its own: its pip.
    ("/opt/m/venv/bin/python", "/opt/m/venv", "/usr", False,
     ["/opt/m/venv/bin/python", "-m", "pip", "install"]),
    # Onedir: salt-pip, into its extras directory.
    ("/opt/saltstack/salt/bin/python3.10", "/opt/saltstack/salt", "/opt/saltstack/salt", True,
     ["/opt/saltstack/salt/salt-pip", "install"]),
])
def test_pip_is_chosen_by_the_minions_python(monkeypatch, exe, prefix, base, salt_pip, expect):
    import types  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(lv_state, "sys", types.SimpleNamespace(executable=exe, prefix=prefix,
                                                               base_prefix=base))
    monkeypatch.setattr(lv_state.os, "access",
                        lambda p, mode: salt_pip and p == "/opt/saltstack/salt/salt-pip")
    monkeypatch.setattr(lv_state.os.path, "realpath", lambda p: p)
    assert lv_state._pip_argv() == expect


def test_management_node_opens_dns_and_dhcp_only():
    want = fw_mod.wanted(view("mgmt01"))
    assert want == ['rule family="ipv4" source address="172.30.10.0/24" service name="dns" '
                    'accept', 'rule family="ipv4" service name="dhcp" accept']
    # No hypervisor opens anything to a management-only node, and none opens DNS.
    for node in ("kvm01", "kvm02"):
        rules = fw_mod.wanted(view(node))
        assert not any('"172.30.10.11"' in r or 'name="dns"' in r for r in rules), rules


@pytest.mark.parametrize("active,expect", [
    ({"ufw.service"}, "ufw.service runs, not firewalld"),
    ({"nftables.service"}, "nftables.service runs, not firewalld"),
    (set(), None),
])
def test_preflight_names_the_ports_where_another_firewall_runs(active, expect):
    pre = load_module("_states", "kvmcluster_preflight")
    pre.__salt__ = {
        "kvmcluster_firewall.running": lambda: False,
        "kvmcluster_firewall.wanted": fw_mod.wanted,
        "kvmcluster_node.unit_state": lambda u: {"active": u in active},
    }
    got = pre._other_firewall(view("kvm01"))
    if expect is None:
        assert got is None
        return
    assert got.startswith(expect)
    assert "2049/tcp from 172.30.10.42" in got and "20048/tcp+udp from 172.30.10.43" in got
    assert "49152-49215/tcp from 172.30.20.42" in got
    mgmt = pre._other_firewall(view("mgmt01"))
    assert "53/tcp+udp from 172.30.10.0/24" in mgmt and "67/udp from anywhere" in mgmt


@pytest.mark.parametrize("allow,kw", [(False, {"install_recommends": False}), (True, {})])
def test_apt_recommends_follow_the_model_by_default(allow, kw):
    """No recommends unless packages:install_recommends (every state's installs)."""
    sk = UTILS["kvmcluster_state.skeleton"]()
    got = []
    salt = {"grains.get": lambda key: "Debian",
            "kvmcluster_model.current": lambda: {"packages": {"install_recommends": allow}},
            "pkg.install": lambda pkgs, refresh=True, **k: got.append(k),
            "pkg.version": lambda *n: {x: "1" for x in n} if len(n) > 1 else "1"}
    sk.packages_install(salt, {"virtinst": {"old": None, "new": None}})
    assert got == [kw]
    salt["grains.get"] = lambda key: "RedHat"
    sk.packages_install(salt, {"virtinst": {"old": None, "new": None}})
    assert got[-1] == {}


# ---- libvirt's config files: real files, the real read/write code ---------------------

lv_mod = load_module("_modules", "kvmcluster_libvirt")
node_mod = load_module("_modules", "kvmcluster_node")


@pytest.fixture
def conf_files(tmp_path):
    """libvirtd.conf and qemu.conf as Debian ships them (modes included), drop-ins in tmp."""
    files = {"path": tmp_path / "libvirtd.conf", "qemu_config": tmp_path / "qemu.conf",
             "env_file": tmp_path / "libvirtd.env"}
    files["path"].write_text("#listen_tls = 0\nunix_sock_group = \"libvirt\"\n")
    files["path"].chmod(0o644)
    files["qemu_config"].write_text('#migration_port_min = 49152\nvnc_password = "s3cret"\n')
    files["qemu_config"].chmod(0o600)
    lv_mod.__salt__ = {"kvmcluster_node.write_file": node_mod.write_file}
    systemctl = []
    certs = tmp_path / "etc" / "pki" / "qemu"
    (tmp_path / "etc").mkdir()
    lv_state.__utils__ = {**UTILS, "kvmcluster_pki.layout": lambda: {"dir": str(certs)}}
    files["certs"] = certs
    lv_state.__salt__ = {
        "kvmcluster_libvirt.conf_diff": lv_mod.conf_diff,
        "kvmcluster_libvirt.conf_write": lv_mod.conf_write,
        "kvmcluster_libvirt.socket_dropin": lv_mod.socket_dropin,
        "kvmcluster_libvirt.dropin_path": lambda unit: str(tmp_path / f"{unit}.d/x.conf"),
        "kvmcluster_node.file_text": node_mod.file_text,
        "kvmcluster_node.write_file": node_mod.write_file,
        "kvmcluster_node.systemctl": lambda *a: systemctl.append(a),
    }
    return {k: str(v) for k, v in files.items()}


def _config(files, v, test):
    lv_state.__salt__["kvmcluster_model.current"] = lambda: copy.deepcopy(v)
    lv_state.__opts__ = {"test": test}
    return lv_state.config_managed("c", rw_sockets=["libvirtd.socket"],
                                   env={"LIBVIRTD_ARGS": ""},
                                   **{k: v for k, v in files.items() if k != "certs"})


def test_qemu_conf_takes_the_migration_ports_and_keeps_its_mode(conf_files):
    v = view("kvm02")
    v["migration"]["ports"] = [50000, 50063]
    predicted = _config(conf_files, v, True)
    real = _config(conf_files, v, False)
    assert real["result"] is True, real["comment"]
    assert predicted["result"] is None and predicted["changes"] == real["changes"]
    # The stream over TLS with the cluster's certificates, each side checking the other's,
    # and no migration in clear (forced).
    assert real["changes"][conf_files["qemu_config"]] == {
        "migration_port_min": {"old": None, "new": "50000"},
        "migration_port_max": {"old": None, "new": "50063"},
        "migrate_tls_x509_cert_dir": {"old": None, "new": f'"{conf_files["certs"]}"'},
        "migrate_tls_x509_verify": {"old": None, "new": "1"},
        "migrate_tls_force": {"old": None, "new": "1"}}
    # The directory qemu.conf names is made (libvirtd would not start without it).
    assert real["changes"][conf_files["certs"]] == {
        "old": None, "new": "directory (QEMU's migration certificates)"}
    assert os.path.isdir(conf_files["certs"])
    qemu = conf_files["qemu_config"]
    assert oct(os.stat(qemu).st_mode & 0o777) == "0o600"  # it may hold passwords
    text = open(qemu, encoding="utf-8").read()
    assert 'vnc_password = "s3cret"' in text and "migration_port_min = 50000" in text
    assert oct(os.stat(conf_files["path"]).st_mode & 0o777) == "0o644"
    again = _config(conf_files, v, False)
    assert (again["result"], again["changes"]) == (True, {})


def test_plaintext_migration_is_only_what_the_model_says(conf_files):
    v = view("kvm02")
    v["migration"]["plaintext"] = True
    real = _config(conf_files, v, False)
    assert real["result"] is True, real["comment"]
    assert real["changes"][conf_files["qemu_config"]]["migrate_tls_force"] == {
        "old": None, "new": "0"}
    v["migration"]["plaintext"] = False
    back = _config(conf_files, v, False)
    assert back["changes"][conf_files["qemu_config"]] == {
        "migrate_tls_force": {"old": "0", "new": "1"}}


def test_qemu_conf_is_left_alone_without_migration(conf_files):
    v = view("kvm02")
    v["migration"]["enabled"] = False
    before = open(conf_files["qemu_config"], encoding="utf-8").read()
    ret = _config(conf_files, v, False)
    assert ret["result"] is True and conf_files["qemu_config"] not in ret["changes"]
    assert open(conf_files["qemu_config"], encoding="utf-8").read() == before


def test_selinux_by_pool_role_the_primary_apart_from_the_share(monkeypatch, tmp_path):
    """One state per pool: the primary's path (before its pool, never waiting on the share)
    and the share's (after the mount, with virt_use_nfs)."""
    v = view("kvm02")
    host = SELinuxHost(nfs_mounts=(), unlabelled=())
    security.__salt__ = host.salt(v)
    monkeypatch.setattr(security, "_selinux_mode", lambda: "enforcing")
    monkeypatch.setattr(security.os.path, "exists", lambda p: True)
    security.__opts__ = {"test": True}
    security.__utils__ = UTILS
    primary = security.selinux_contexts("p", packages=["policycoreutils-python-utils"],
                                        role="primary")
    share = security.selinux_contexts("s", packages=["policycoreutils-python-utils"],
                                      role="secondary")
    assert sorted(primary["changes"]) == ["fcontext:/data01/primary(/.*)?"]
    assert sorted(share["changes"]) == ["fcontext:/mnt/secondary(/.*)?", "virt_use_nfs"]
