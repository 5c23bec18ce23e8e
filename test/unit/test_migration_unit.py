"""Migration: the SSH transport's files and the account's key line from the model, the state
under test=True and for real, and the deletes after a migration (libvirt's test driver)."""
import copy
import os

import pytest

from kvmtestlib import SEED_PILLAR, NoClose, fake_pubkey, formula_values, load_module, utils_dunder

model = load_module("_modules", "kvmcluster_model")
state = load_module("_states", "kvmcluster_migration")
account = load_module("_states", "kvmcluster_account")
node_mod = load_module("_modules", "kvmcluster_node")

PRIV = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n"
        "-----END OPENSSH PRIVATE KEY-----\n")
PUB = fake_pubkey("MigrationKeyForTestsOnly", comment="kvmcluster-migration")
HK = {n: fake_pubkey(f"HostKeyOf{n}") for n in
      ("kvm01", "kvm02", "kvm03", "mgmt01", "mgmt02")}


def view(node, ssh=True, edit=None):
    p = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    for n, key in HK.items():
        p["nodes"][n]["ssh_host_keys"] = [key]
    if ssh:
        p["migration"]["ssh"] = {"private_key": PRIV, "public_key": PUB}
    if edit:
        edit(p)
    built, errors = model.build(p, formula_values()["cluster"])
    assert not errors, [str(e) for e in errors]
    return model.node_view(built, node)


def test_known_hosts_and_ssh_config_name_the_peers_only():
    v = view("kvm01")
    kh = state._known_hosts_text(v).splitlines()
    assert kh[1:] == [
        f"172.30.10.42,kvm02,kvm02.cluster.example.com {HK['kvm02']}",
        f"172.30.10.43,kvm03,kvm03.cluster.example.com {HK['kvm03']}"]
    conf = state._ssh_config_text(v)
    assert ("Match user kvmadmin host 172.30.10.42,kvm02,kvm02.cluster.example.com,"
            "172.30.10.43,kvm03,kvm03.cluster.example.com\n") in conf
    assert "    StrictHostKeyChecking yes\n" in conf
    assert "StrictHostKeyChecking no" not in conf and "172.30.10.41" not in conf
    files = state._desired_files(v)
    assert files[state.KEY_FILE] == (PRIV, 0o600)


def test_without_a_key_pair_the_files_must_go():
    files = state._desired_files(view("kvm01", ssh=False))
    assert all(text is None for text, _ in files.values())


def test_the_account_admits_the_key_from_the_peers_only_with_restrict():
    assert account._migration_keys(view("kvm02")) == [
        f'restrict,from="172.30.10.41,172.30.10.43",command="/usr/bin/virt-ssh-helper '
        f'qemu:///system" {" ".join(PUB.split()[:2])} kvmcluster-migration']
    assert account._migration_keys(view("mgmt01")) == []  # not a hypervisor
    assert account._migration_keys(view("kvm02", ssh=False)) == []
    # A key with options is the same key as without them (one line, never two).
    line = account._migration_keys(view("kvm02"))[0]
    assert account._key_id(line) == " ".join(PUB.split()[:2])


@pytest.fixture
def live(tmp_path, monkeypatch):
    """The state with its paths under tmp_path and the real file writer."""
    for const, rel in (("CONFIG_DIR", "etc/kvmcluster/migration"),
                       ("KEY_FILE", "etc/kvmcluster/migration/id_ed25519"),
                       ("KNOWN_HOSTS", "etc/kvmcluster/migration/known_hosts"),
                       ("SSH_CONFIG", "etc/ssh/ssh_config.d/60-kvmcluster-migration.conf")):
        monkeypatch.setattr(state, const, str(tmp_path / rel))
    box = {}
    state.__salt__ = {"kvmcluster_model.current": lambda: box["view"],
                      "kvmcluster_node.file_text": node_mod.file_text,
                      "kvmcluster_node.write_file": node_mod.write_file}
    state.__utils__ = utils_dunder()

    def run(v, test):
        box["view"] = v
        state.__opts__ = {"test": test}
        return state.transport("kvmcluster-migration-transport-managed")
    return run


def test_test_mode_equals_the_real_run_then_nothing_and_the_key_is_private(live):
    v = view("kvm01")
    predicted = live(v, True)
    real = live(v, False)
    assert predicted["result"] is None and real["result"] is True, real["comment"]
    assert predicted["changes"] == real["changes"]
    assert real["changes"][state.KEY_FILE] == {"old": None, "new": "present"}
    assert PRIV not in str(real["changes"])  # the secret never reaches the output
    assert os.stat(state.KEY_FILE).st_mode & 0o777 == 0o600
    again = live(v, False)
    assert again["result"] is True and again["changes"] == {}
    os.chmod(state.KEY_FILE, 0o644)  # someone widened it: put back, reported
    fixed = live(v, False)
    assert fixed["changes"][state.KEY_FILE]["old"] == "mode 644"
    assert os.stat(state.KEY_FILE).st_mode & 0o777 == 0o600
    gone = live(view("kvm01", ssh=False), False)
    assert gone["result"] is True and not os.path.exists(state.KEY_FILE)
    assert set(gone["changes"]) == {state.KEY_FILE, state.KNOWN_HOSTS, state.SSH_CONFIG}


def test_management_node_has_nothing_to_do(live):
    res = live(view("mgmt01"), False)
    assert res["result"] is True and res["changes"] == {}
    assert "not a hypervisor" in res["comment"]


# ---- deletes after a migration: libvirt's test driver --------------------------------

libvirt = pytest.importorskip("libvirt")
GIB = 1 << 30
NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
    <active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>4194304</memory>
  <pool type='dir'><name>default</name><target><path>/data01/primary</path></target></pool>
  <pool type='dir'><name>other</name><target><path>/data01/other</path></target></pool>
</node>
"""


@pytest.fixture
def mig(tmp_path):
    (tmp_path / "node.xml").write_text(NODE_XML)
    conn = libvirt.open(f"test://{tmp_path / 'node.xml'}")
    mod = load_module("_modules", "kvmcluster_migration")
    mod.__utils__ = {**utils_dunder(), "kvmcluster_virt.binding": lambda: libvirt,
                     "kvmcluster_virt.connect": lambda uri: NoClose(conn)}
    v = view("kvm01")
    mod.__salt__ = {"kvmcluster_model.current": lambda: v}
    for pool, name in (("default", "web1.qcow2"), ("default", "db1.qcow2"),
                       ("other", "web1.qcow2")):
        conn.storagePoolLookupByName(pool).createXML(
            f"<volume><name>{name}</name><capacity>{GIB}</capacity>"
            "<target><format type='qcow2'/></target></volume>", 0)
    mod.conn = conn
    return mod


def _domain(conn, name, disk):
    conn.defineXML(f"<domain type='test'><name>{name}</name><memory>131072</memory>"
                   "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                   f"<source file='{disk}'/><target dev='vda'/></disk></devices></domain>")


def _vols(conn, pool="default"):
    p = conn.storagePoolLookupByName(pool)
    p.refresh(0)
    return sorted(p.listVolumes())


def test_source_cleanup_deletes_the_moved_vms_copies_only(mig):
    _domain(mig.conn, "db1", "/data01/primary/db1.qcow2")
    out = mig.source_cleanup("web1", ["/data01/primary/web1.qcow2", "/data01/primary/db1.qcow2",
                                      "/data01/other/web1.qcow2", "/etc/passwd"])
    assert out["deleted"] == ["/data01/primary/web1.qcow2"]
    assert out["kept"] == {"/data01/primary/db1.qcow2": "used by another domain here",
                           "/data01/other/web1.qcow2": "not in the primary pool "
                                                       "(/data01/primary)",
                           "/etc/passwd": "not in the primary pool (/data01/primary)"}
    assert _vols(mig.conn) == ["db1.qcow2"] and _vols(mig.conn, "other") == ["web1.qcow2"]


def test_source_cleanup_deletes_nothing_while_the_vm_is_still_here(mig):
    _domain(mig.conn, "web1", "/data01/primary/web1.qcow2")
    mig.conn.lookupByName("web1").undefine()
    _domain(mig.conn, "web1", "/data01/primary/elsewhere.qcow2")  # defined, other disk
    out = mig.source_cleanup("web1", ["/data01/primary/web1.qcow2"])
    assert out == {"deleted": [], "kept": {"/data01/primary/web1.qcow2":
                                           "web1 is still defined here"}}
    assert "web1.qcow2" in _vols(mig.conn)


def test_prepare_never_overwrites_and_unprepare_undoes_only_what_is_unused(mig):
    plan = {"name": "web2", "disks": [
        {"target": "vda", "path": "/data01/primary/web2.qcow2", "format": "qcow2",
         "capacity": GIB, "backing": [], "backing_format": None, "shared": False}]}
    made = mig.prepare(plan, ["vda"])["made"]
    assert made == ["/data01/primary/web2.qcow2"] and "web2.qcow2" in _vols(mig.conn)
    with pytest.raises(mig.CommandExecutionError, match="not a free path"):
        mig.prepare(plan, ["vda"])  # it exists now: never over it
    assert mig.unprepare("web2", made)["deleted"] == made
    assert "web2.qcow2" not in _vols(mig.conn)


def test_target_uri_is_ssh_to_the_account_or_tls_never_plain_tcp(mig):
    v = view("kvm01")
    assert mig.target_uri(v, "kvm02") == "qemu+ssh://kvmadmin@172.30.10.42/system"
    with pytest.raises(mig.CommandExecutionError, match="migration over SSH is not set up"):
        mig.target_uri(view("kvm01", ssh=False), "kvm02")

    def tls(p):
        p["migration"]["transport"] = "tls"
        p["libvirt"]["tls"]["enabled"] = True
    assert mig.target_uri(view("kvm01", edit=tls), "kvm02") == \
        "qemu+tls://kvm02.cluster.example.com/system"


# ---- never a second copy: the VM state before it makes a VM -------------------------

vm_state = load_module("_states", "kvmcluster_vm")


def _vm_view(answers):
    def edit(p):
        p["images"] = {"debian12": {"volume": "debian12-golden.qcow2", "format": "qcow2"}}
        p["vms"] = {"web1": {"node": "kvm02", "image": "debian12", "ip": "172.30.10.111"}}
    v = view("kvm02", edit=edit)
    calls = []

    def answers_fn(ip, mac=None):
        calls.append((ip, mac))
        return answers
    vm_state.__salt__ = {
        "kvmcluster_model.current": lambda: v,
        "kvmcluster_vm.describe": lambda name, uri=None: {"name": name, "exists": False},
        "kvmcluster_vm.answers": answers_fn,
        "kvmcluster_pool.describe": lambda p, uri=None: {"active": True},
        "kvmcluster_vm.golden": lambda img, pool, uri=None: {"path": "/mnt/secondary/g",
                                                             "capacity": 1 << 30,
                                                             "format": "qcow2"},
        "kvmcluster_vm.volume_exists": lambda pool, name, uri=None: False,
        "kvmcluster_vm.capacity": lambda uri=None: {"memory_mb": 65536, "cpus": 16,
                                                     "committed": {}},
    }
    vm_state.__utils__ = utils_dunder()
    return v, calls


@pytest.mark.parametrize("test", [True, False])
def test_a_vm_that_answers_elsewhere_is_never_started_again(test):
    v, calls = _vm_view("echo reply")
    vm_state.__opts__ = {"test": test}
    res = vm_state.managed("kvmcluster-vms-managed")
    assert res["result"] is False and res["changes"] == {}, res
    assert "VM web1 is not on kvm02 but answers at 172.30.10.111 (echo reply)" in res["comment"]
    assert "salt-run kvmcluster.migrate vm=web1 target=kvm02" in res["comment"]
    assert calls == [("172.30.10.111", v["vms"]["web1"]["mac"])]


def test_a_vm_that_answers_nowhere_is_planned_as_new():
    _vm_view("")
    vm_state.__opts__ = {"test": True}
    res = vm_state.managed("kvmcluster-vms-managed")
    assert res["result"] is None and list(res["changes"]) == ["web1"], res
    assert res["changes"]["web1"]["old"] is None


def test_unit_state_reads_one_systemctl_show():
    calls = []

    def run_all(argv, **_kw):
        calls.append(argv)
        return {"retcode": 0, "stderr": "",
                "stdout": "LoadState=loaded\nUnitFileState=enabled\nActiveState=active\n"}
    node_mod.__salt__ = {"cmd.run_all": run_all}
    assert node_mod.unit_state("libvirtd.socket") == {
        "exists": True, "enabled": "enabled", "active": True, "label": "enabled/active"}
    assert calls == [["systemctl", "show", "--property=LoadState,UnitFileState,ActiveState",
                      "libvirtd.socket"]]
    node_mod.__salt__ = {"cmd.run_all": lambda argv, **_kw: {
        "retcode": 0, "stderr": "",
        "stdout": "LoadState=not-found\nUnitFileState=\nActiveState=inactive\n"}}
    assert node_mod.unit_state("nope.service") == {
        "exists": False, "enabled": "", "active": False, "label": "/inactive"}


def test_progress_of_a_vm_that_is_gone_or_stopped_is_no_job(mig):
    assert mig.progress("nothere") == {"vm": "nothere", "active": False, "here": False}
    _domain(mig.conn, "db1", "/data01/primary/db1.qcow2")  # defined, not running
    assert mig.progress("db1") == {"vm": "db1", "active": False, "here": True}


def test_progress_of_a_running_vm_asks_libvirt_for_its_job(mig):
    _domain(mig.conn, "web1", "/data01/primary/web1.qcow2")
    mig.conn.lookupByName("web1").create()
    # libvirt's test driver keeps no job statistics: the reason comes back as it is.
    with pytest.raises(mig.CommandExecutionError, match="VM web1: no job statistics"):
        mig.progress("web1")


@pytest.mark.parametrize("value, want", [(None, None), (0, None), ("", None), (200, 200),
                                         ("50", 50), (100000, 100000)])
def test_bandwidth_is_mib_per_second(mig, value, want):
    assert mig._bandwidth(value) == want


@pytest.mark.parametrize("value", [-1, 100001, "fast", True, 1.5, "10;reboot"])
def test_a_bandwidth_that_is_no_number_is_refused(mig, value):
    with pytest.raises(mig.CommandExecutionError, match="give MiB/s, 1-100000"):
        mig._bandwidth(value)


class _Dom:
    """A running VM whose migration call is recorded (the test driver cannot migrate)."""

    def __init__(self, calls):
        self.calls = calls

    def isActive(self):  # noqa: N802 - libvirt's names
        return 1

    def autostart(self):
        return 0

    def setAutostart(self, flag):  # noqa: N802
        pass

    def isPersistent(self):  # noqa: N802
        return 1

    def migrateToURI3(self, uri, params, flags):  # noqa: N802
        self.calls.append((uri, dict(params), flags))

    def jobStats(self, flags=0):  # noqa: N802
        return {"downtime": 12, "time_elapsed": 900}


class _Conn:
    def __init__(self, calls):
        self.calls = calls

    def lookupByName(self, name):  # noqa: N802
        return _Dom(self.calls)

    def close(self):
        pass


@pytest.mark.parametrize("plaintext", [False, True])
def test_the_stream_is_encrypted_unless_the_model_says_plaintext(plaintext):
    """migrate() asks libvirt for TLS (QEMU's stream and the disk copy) under the defaults,
    and leaves it out only with migration:plaintext true."""
    calls = []
    mod = load_module("_modules", "kvmcluster_migration")
    mod.__utils__ = {**utils_dunder(), "kvmcluster_virt.binding": lambda: libvirt,
                     "kvmcluster_virt.connect": lambda uri: _Conn(calls)}
    v = view("kvm01", edit=lambda p: p["migration"].update(plaintext=plaintext))
    mod.__salt__ = {"kvmcluster_model.current": lambda: v}
    out = mod.migrate("web1", "kvm02", copy=["vda"])
    assert out["to"] == "kvm02" and out["downtime_ms"] == 12
    (uri, params, flags), = calls
    assert uri == "qemu+ssh://kvmadmin@172.30.10.42/system"
    # The stream to the target's address on the migration network, where it listens only.
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://172.30.20.42"
    assert params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] == "172.30.20.42"
    assert bool(flags & libvirt.VIR_MIGRATE_TLS) is not plaintext
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_INC and flags & libvirt.VIR_MIGRATE_LIVE


def test_without_a_migration_network_the_stream_goes_to_the_node_address():
    calls = []
    mod = load_module("_modules", "kvmcluster_migration")
    mod.__utils__ = {**utils_dunder(), "kvmcluster_virt.binding": lambda: libvirt,
                     "kvmcluster_virt.connect": lambda uri: _Conn(calls)}

    def edit(p):
        p["networks"]["migration"] = None
        for n in p["nodes"].values():
            n.pop("migration_ip", None)
    v = view("kvm01", edit=edit)
    mod.__salt__ = {"kvmcluster_model.current": lambda: v}
    mod.migrate("web1", "kvm02")
    (_, params, _), = calls
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://172.30.10.42"
    assert libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS not in params


def test_the_target_refuses_when_its_migration_address_is_not_on_it():
    mod = load_module("_modules", "kvmcluster_migration")
    node = load_module("_modules", "kvmcluster_node")
    mod.__salt__ = {"kvmcluster_node.local_address": node.local_address}
    me = {"name": "kvm02", "migration_ip": "192.0.2.250"}
    assert mod._migration_address_reasons(me) == [
        "migration_ip 192.0.2.250 is on no interface of kvm02: configure it on the migration "
        "network's interface (kvmcluster:networks:migration)"]
    assert mod._migration_address_reasons({"name": "kvm02", "migration_ip": "127.0.0.1"}) == []
    assert mod._migration_address_reasons({"name": "kvm02", "migration_ip": None}) == []
