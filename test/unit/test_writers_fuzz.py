"""Every writer refuses, and writes nothing from, a value holding a control character or one
of its file's metacharacters: the second line of defence behind the model. Seeded per run and
printed; KVMCLUSTER_FUZZ_SEED=<n> replays a run."""
import copy
import os
import random

import pytest

from kvmtestlib import SEED_PILLAR, fake_pubkey, formula_values, load_module

SEED = int(os.environ.get("KVMCLUSTER_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
ROUNDS = 150

model = load_module("_modules", "kvmcluster_model")
netrender = load_module("_modules", "kvmcluster_netrender")
dns = load_module("_modules", "kvmcluster_dns")
nfs_mod = load_module("_modules", "kvmcluster_nfs")
nfs_state = load_module("_states", "kvmcluster_nfs")
vm_mod = load_module("_modules", "kvmcluster_vm")
account = load_module("_states", "kvmcluster_account")
migration = load_module("_states", "kvmcluster_migration")
security = load_module("_states", "kvmcluster_security")
libvirt_state = load_module("_states", "kvmcluster_libvirt")
sysctl = load_module("_states", "kvmcluster_sysctl")
safe = load_module("_utils", "kvmcluster_safe")

# Never allowed anywhere: line breaks of every kind, NUL, escapes, format characters.
CONTROL = ["\n", "\r", "\t", "\x0b", "\x0c", "\x00", "\x1b", "\x7f", "\x85", "\u2028",
           "\u2029", "\u200b", "\ufeff"]
# Structure in at least one of the grammars: separators, quotes, comments, globs, shell.
META = [" ", '"', "'", "#", ";", ",", "\\", "(", ")", "*", "|", "{", "}", "$", "`", "[",
        "]", "<", ">", "&", "!", "?", "~", "^", "%"]


def _view(node="kvm01", edit=None):
    pillar = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    pillar["nodes"]["kvm02"]["ssh_host_keys"] = [fake_pubkey("kvm02")]
    pillar["nodes"]["kvm03"]["ssh_host_keys"] = [fake_pubkey("kvm03")]
    pillar["nodes"]["kvm01"]["ssh_host_keys"] = [fake_pubkey("kvm01")]
    built, errors = model.build(pillar, formula_values()["cluster"])
    assert not errors, errors
    view = model.node_view(built, node)
    if edit:
        edit(view)
    return view


PLAN = {"name": "kvm01", "address": "172.30.10.41/24", "ip": "172.30.10.41",
        "gateway": "172.30.10.1", "dns_servers": ["172.30.10.11"],
        "dns_search": ["cluster.example.com"],
        "bridge": {"name": "br0", "mtu": 1500, "stp": False, "forward_delay": 0},
        "port": {"kind": "nic", "name": "eth0", "slaves": [], "mtu": 1500},
        "nics": ["eth0"], "mac": "52:54:00:aa:bb:01", "nic_macs": ["52:54:00:aa:bb:01"]}


def _plan(path, value):
    p = copy.deepcopy(PLAN)
    cur = p
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return p


def _set(path, value):
    def edit(view):
        cur = view
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
    return edit


VM = {"name": "web1", "domain_type": "qemu", "vcpus": 1, "memory_mb": 128, "disk_gb": 1,
      "disks": [], "clone": "full", "mac": "52:54:00:00:00:01"}
IMAGE = {"name": "gold", "kernel": "/mnt/secondary/vmlinuz", "initrd": None, "cmdline": None}
DISK = {"path": "/data01/primary/web1.qcow2", "format": "qcow2", "pool": "default",
        "name": "web1.qcow2"}
SEC = {"export_path": "/data01/secondary", "mountpoint": "/mnt/secondary",
       "mount_options": ["hard", "vers=4.2"]}

# writer -> (base value, call(value)); the call puts the value in one place of the writer's
# input and renders. Its grammar (GRAMMAR, kvmcluster_safe.SPEC) says which of META are
# structure there: those, and every control character, are hostile to it.
WRITERS = {
    "interfaces: address": ("172.30.10.41/24", lambda v: netrender.target(
        "ifupdown", _plan(("address",), v), {})),
    "interfaces: dns server": ("172.30.10.11", lambda v: netrender.target(
        "ifupdown", _plan(("dns_servers", 0), v), {})),
    "keyfile: bridge name": ("br0", lambda v: netrender.target(
        "networkmanager", _plan(("bridge", "name"), v), {})),
    "netplan: search domain": ("cluster.example.com", lambda v: netrender.target(
        "netplan", _plan(("dns_search", 0), v), {})),
    "ifcfg: gateway": ("172.30.10.1", lambda v: netrender.target(
        "ifcfg", _plan(("gateway",), v), {})),
    "ifcfg: NIC": ("eth0", lambda v: netrender.target(
        "ifcfg", _plan(("port", "name"), v), {})),
    "dnsmasq: record": ("172.30.10.1", lambda v: dns.hosts_lines(
        _view("mgmt01", _set(("dns", "records", "gateway"), v)))),
    "dnsmasq: upstream": ("192.0.2.53", lambda v: dns.conf_text(
        _view("mgmt01", _set(("dns", "upstream"), [v])))),
    "dnsmasq: domain": ("cluster.example.com", lambda v: dns.conf_text(
        _view("mgmt01", _set(("domain",), v)))),
    "dnsmasq: lease MAC": ("52:54:00:10:00:01", lambda v: dns.dhcp_host_lines(
        _view("mgmt01", _set(("dhcp", "hosts", "golden-builder", "mac"), v)))),
    "dnsmasq: lease time": ("12h", lambda v: dns.conf_text(
        _view("mgmt01", _set(("dhcp", "lease_time"), v)))),
    "exports: path": ("/data01/secondary", lambda v: nfs_mod.exports_text(
        v, ["172.30.10.41"], ["rw", "sync"])),
    "exports: client": ("172.30.10.41", lambda v: nfs_mod.exports_text(
        "/data01/secondary", [v], ["rw", "sync"])),
    "exports: option": ("no_subtree_check", lambda v: nfs_mod.exports_text(
        "/data01/secondary", ["172.30.10.41"], ["rw", v])),
    "fstab: mountpoint": ("/mnt/secondary", lambda v: nfs_state._fstab_line(
        dict(SEC, mountpoint=v, address="172.30.10.41"), False)),
    "fstab: option": ("vers=4.2", lambda v: nfs_state._fstab_line(
        dict(SEC, mount_options=["hard", v], address="172.30.10.41"), False)),
    "sudoers: account": ("kvmadmin", lambda v: account._sudoers_text(v)),
    "known_hosts: host key": (fake_pubkey("kvm02"), lambda v: migration._known_hosts_text(
        _view("kvm01", _set(("nodes", "kvm02", "ssh_host_keys"), [v])))),
    "AppArmor: pool path": ("/data01/primary", lambda v: security._block([v])),
    "SELinux fcontext: pool path": ("/data01/primary", lambda v: safe.fcontext_spec(v)),
    "libvirtd.conf: socket group": ("libvirt", lambda v: libvirt_state._desired_settings(
        _view("kvm01", _set(("libvirt", "unix_sock_group"), v)))),
    "sysctl: value": ("10", lambda v: sysctl._render({"vm.swappiness": v})),
    "sysctl: key": ("vm.swappiness", lambda v: sysctl._render({v: 10})),
}
# Writers whose grammar takes any printable character: only control characters are hostile.
PRINTABLE = {
    "authorized_keys: key comment": (fake_pubkey("op", comment="op@mgmt"),
                                     lambda v: account._keys_text("", [v])),
    "domain XML: kernel command line": ("console=ttyS0", lambda v: vm_mod.domain_xml(
        VM, dict(IMAGE, cmdline=v), [DISK])),
    "domain XML: disk path": ("/data01/primary/web1.qcow2", lambda v: vm_mod.domain_xml(
        VM, IMAGE, [dict(DISK, path=v)])),
}


GRAMMAR = {'interfaces: address': 'network', 'interfaces: dns server': 'network', 'keyfile: bridge name': 'network', 'netplan: search domain': 'network', 'ifcfg: gateway': 'network', 'ifcfg: NIC': 'network', 'dnsmasq: record': 'dnsmasq', 'dnsmasq: upstream': 'dnsmasq', 'dnsmasq: domain': 'dnsmasq', 'dnsmasq: lease MAC': 'dnsmasq', 'dnsmasq: lease time': 'dnsmasq', 'exports: path': 'exports', 'exports: client': 'exports', 'exports: option': 'exports', 'fstab: mountpoint': 'fstab', 'fstab: option': 'fstab', 'sudoers: account': 'sudoers', 'known_hosts: host key': 'known_hosts', 'AppArmor: pool path': 'path', 'SELinux fcontext: pool path': 'path', 'libvirtd.conf: socket group': 'libvirt_conf', 'sysctl: value': 'sysctl', 'sysctl: key': 'sysctl_key', 'authorized_keys: key comment': 'authorized_keys', 'domain XML: kernel command line': 'xml', 'domain XML: disk path': 'xml'}


def _hostile_chars(name):
    allowed = safe._ALLOWED[GRAMMAR[name]]
    return CONTROL + [m for m in META if not allowed.match(m)]


def _hostile(rng, base, chars):
    i = rng.randrange(len(base) + 1)
    bad = "".join(rng.choice(chars) for _ in range(rng.randint(1, 3)))
    tail = rng.choice(["", "up touch /root/x", "server=203.0.113.9", "/**", " ALL=(ALL) ALL",
                       "ssh-ed25519 AAAA attacker"])
    return base[:i] + bad + tail + base[i:]


def test_every_writer_writes_its_base_value():
    assert set(GRAMMAR) == set(WRITERS) | set(PRINTABLE)
    for name, (base, call) in {**WRITERS, **PRINTABLE}.items():
        assert call(base) is not None, name
    # Structure characters of the line-based files are hostile to them.
    for name in ("interfaces: address", "dnsmasq: record", "exports: path", "sudoers: account"):
        assert {" ", "#", '"', ","} <= set(_hostile_chars(name)), name


@pytest.mark.parametrize("name", sorted(WRITERS) + sorted(PRINTABLE))
def test_writer_refuses_control_and_meta_characters(name):
    print(f"writer fuzz seed: {SEED} (KVMCLUSTER_FUZZ_SEED={SEED} replays it)")
    rng = random.Random(f"{SEED}/{name}")
    base, call = WRITERS.get(name) or PRINTABLE[name]
    chars = _hostile_chars(name)
    for _ in range(ROUNDS):
        value = _hostile(rng, base, chars)
        with pytest.raises(safe.Unsafe.__mro__[1], match="refused, nothing written") as exc:
            out = call(value)
            pytest.fail(f"seed {SEED}: {name} wrote {value!r}: {str(out)[:200]!r}")
        assert "\n" not in str(exc.value).split(":", 1)[0]


def test_the_fcontext_spec_matches_the_path_only():
    """'.' and '+' are regex characters a safe path may hold: escaped, so the rule labels
    the pool and nothing that merely looks like it."""
    import re

    spec = safe.fcontext_spec("/data01/vm.images+1")
    assert spec == r"/data01/vm\.images\+1(/.*)?"
    assert re.fullmatch(spec, "/data01/vm.images+1/disk.qcow2")
    assert not re.fullmatch(spec, "/data01/vmXimages1/disk.qcow2")
