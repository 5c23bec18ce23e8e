"""Salt configuration for the lab's management node: master config, roster, Saltfile, pillar.

The lab writes a pillar that models its own rack the way an operator would model theirs
(see pillar.example); only what is lab-specific (no usable KVM acceleration) differs.
"""
import os
import subprocess
from pathlib import Path

import yaml

from . import net, paths

SALT_DIR = paths.HOME / "salt"
PILLAR_DIR = SALT_DIR / "pillar"
VENV_BIN = paths.REPO_ROOT / ".venv" / "bin"
ROLLBACK_TIMEOUT = 30


SUBNET_BASE = net.SUBNET.rsplit(".", 1)[0]
# The lab's DHCP guest (a static lease from the management node).
TINY_MAC = "52:54:00:7e:00:01"


def lab_pillar(nodes):
    """The lab's cluster, in the formula's pillar schema."""
    pillar = {
        "kvmcluster": {
            "domain": "lab.kvmcluster.test",
            "subnets": [net.SUBNET],
            "gateway": net.GATEWAY,
            "dns_servers": [net.MGMT_IP],
            "storage": {"primary": {"name": "default", "path": "/data01/primary",
                                    "min_free_gb": 1}},
            # Lab-only: /dev/kvm here cannot run guests, so missing vmx/svm is a warning.
            "preflight": {"hardware_virtualization": "warn"},
            # Lab-only: container nodes share the host's vm.* settings (read-only there).
            "sysctl": {"vm.swappiness": None, "net.core.somaxconn": 1024},
            "account": {"name": "kvmadmin", "create": True,
                        "ssh_keys": [Path(str(paths.SSH_KEY) + ".pub").read_text().strip()]},
            # Lab-only: a short dead-man switch, so that the tests wait less for rollbacks.
            "network": {"rollback_timeout": ROLLBACK_TIMEOUT},
            # Minions with a Python of their own build libvirt-python from the lab's
            # repository, never from the internet.
            "libvirt_python": {"find_links": f"http://{net.GATEWAY}:8080/python/"},
            # Dual stack: a static IPv6 address per node in the lab's ULA prefix.
            "gateway6": net.GATEWAY6,
            "nodes": {
                n.name: {"ip": f"{n.ip}/{net.PREFIXLEN}", "nic": "eth0",
                         "ip6": f"{net.ip6_of(n.ip)}/{net.PREFIXLEN6}",
                         **({"roles": list(n.roles)} if n.roles else {})} for n in nodes
            },
        }
    }
    _migration_over_ssh(pillar["kvmcluster"], nodes)
    mgmt = [n for n in nodes if "management" in n.roles]
    if mgmt:
        # The management node(s) serve DNS and DHCP: the nodes resolve through them. No
        # upstream: the lab has no route to any other resolver.
        pillar["kvmcluster"]["dns_servers"] = [n.ip for n in mgmt]
        pillar["kvmcluster"]["dns"] = {"upstream": [], "records": {"labgw": net.GATEWAY}}
        pillar["kvmcluster"]["dhcp"] = {"range": [f"{SUBNET_BASE}.200", f"{SUBNET_BASE}.219"],
                                        "hosts": {"tiny-dhcp": {"mac": TINY_MAC,
                                                                "ip": f"{SUBNET_BASE}.101"}}}
    return pillar


def _host_key(node):
    """A container node's ed25519 host key (written before its first boot), or None."""
    from . import nodes as lab_nodes  # pylint: disable=import-outside-toplevel

    pub = lab_nodes.node_dir(node) / "root/etc/ssh/ssh_host_ed25519_key.pub"
    return " ".join(pub.read_text().split()[:2]) if pub.exists() else None


def migration_key():
    """The lab cluster's migration key pair (made once, kept in the lab's cache)."""
    key = paths.CACHE / "migration-key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "kvmcluster-migration", "-f", str(key)], check=True)
    return key.read_text(), Path(str(key) + ".pub").read_text().strip()


# Not QEMU's default range (49152-49215): a migration whose incoming port came from
# anywhere but migration:ports (through qemu.conf) shows in the lab.
MIGRATION_PORTS = (49400, 49463)


def _migration_over_ssh(k, nodes):
    """Each node's host key in pillar, as an operator would paste from kvmcluster.host_keys;
    the migration key pair when every hypervisor has one (VM nodes make theirs at boot)."""
    # Certificates valid two hours, renewed with one left: short enough to renew in a test.
    k["migration"] = {"ports": list(MIGRATION_PORTS),
                      "certificates": {"valid_hours": 2, "renew_hours": 1}}
    keys = {n.name: _host_key(n) for n in nodes}
    for n in nodes:
        if keys[n.name]:
            k["nodes"][n.name]["ssh_host_keys"] = [keys[n.name]]
    hypervisors = [n for n in nodes if "management" not in n.roles]
    if hypervisors and all(keys[n.name] for n in hypervisors):
        private, public = migration_key()
        k["migration"]["ssh"] = {"private_key": private, "public_key": public}


# The lab's VMs: three tiny guests on two nodes, made from the golden image on the shared
# storage (a host directory bound into every container node: storage type external).
VM_IPS = {"vm1": f"{SUBNET_BASE}.111", "vm2": f"{SUBNET_BASE}.112", "vm3": f"{SUBNET_BASE}.113",
          "vm4": f"{SUBNET_BASE}.114"}
LAB_VMS = {
    "vm1": {"node": "kvm01", "image": "tiny", "ip": VM_IPS["vm1"]},
    "vm2": {"node": "kvm02", "image": "tiny", "ip": VM_IPS["vm2"], "clone": "linked"},
    # Its kernel command line tells the guest to ignore the ACPI power button.
    "vm3": {"node": "kvm02", "image": "tiny-stubborn", "ip": VM_IPS["vm3"]},
    # Its disk on the shared storage: it migrates without a copy.
    "vm4": {"node": "kvm01", "image": "tiny", "ip": VM_IPS["vm4"], "storage": "secondary"},
}


def with_vms(pillar, vms=None):
    """``pillar`` plus the shared storage, the golden images and the lab's VMs."""
    out = yaml.safe_load(yaml.safe_dump(pillar))
    k = out["kvmcluster"]
    k["storage"]["secondary"] = {"enabled": True, "type": "external",
                                 "mountpoint": paths.SHARED_MOUNT}
    boot = f"{paths.SHARED_MOUNT}/boot"
    tiny = {"volume": "tiny.raw", "format": "raw", "kernel": f"{boot}/vmlinuz",
            "initrd": f"{boot}/tiny-initrd", "cmdline": "console=ttyS0 panic=-1"}
    k["images"] = {"tiny": tiny,
                   "tiny-stubborn": {**tiny, "cmdline": tiny["cmdline"] + " kvmcluster.acpi=0"}}
    # Lab-only: emulated guests (no usable KVM here), small ones, a short ACPI wait.
    k["vm"] = {"domain_type": "qemu", "memory_mb": 160, "disk_gb": 1, "shutdown_timeout": 15,
               "memory_reserve_mb": 512}
    k["vms"] = yaml.safe_load(yaml.safe_dump(LAB_VMS if vms is None else vms))
    return out


UNRELATED_SLS = """lab-unrelated-file-managed:
  file.managed:
    - name: /root/unrelated-formula.txt
    - contents: another formula's state ran
"""


# kvmcluster with one node made slow before its network state (pillar lab_slow: {node: s}).
SLOW_SLS = """include:
  - kvmcluster
{%- set slow = salt["pillar.get"]("lab_slow", {}).get(grains["id"]) %}
{%- if slow %}

lab-slow-before-network:
  cmd.run:
    - name: sleep {{ slow | int }}
    - require_in:
      - kvmcluster_network: kvmcluster-network-bridge-managed
{%- endif %}
"""


# SSH connection reuse: sockets of the ControlMaster connections salt-ssh keeps per node
# (their processes live in the management node's namespace and end with the lab).
MUX_DIR = paths.HOME / "ssh-mux"


def mux_options(on=True):
    if not on:
        return []
    MUX_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return ["ControlMaster=auto", f"ControlPath={MUX_DIR}/%C", "ControlPersist=60"]


def write(nodes, extra_pillar=None):
    for sub in ("pillar", "root", "pki", "states"):
        (SALT_DIR / sub).mkdir(parents=True, exist_ok=True)
    master = {
        "root_dir": str(SALT_DIR / "root"),
        "pki_dir": str(SALT_DIR / "pki"),
        "cachedir": str(SALT_DIR / "root" / "cache"),
        "log_file": str(SALT_DIR / "master.log"),
        "ssh_log_file": str(SALT_DIR / "ssh.log"),
        # The formula, then the lab's own SLS (scenarios such as a slow node).
        "file_roots": {"base": [str(paths.formula_root(SALT_DIR / "formula")),
                                str(SALT_DIR / "states")]},
        "pillar_roots": {"base": [str(PILLAR_DIR)]},
        "state_output": "changes",
        # salt-run state.orchestrate with ssh: true targets the roster, as salt-ssh does.
        "roster_file": str(SALT_DIR / "roster"),
        "runner_dirs": [str(paths.REPO_ROOT / "_runners")],
        # The runners' shared code (the cluster view), as saltutil.sync_utils would.
        "utils_dirs": [str(paths.REPO_ROOT / "_utils")],
        "ssh_max_procs": max(8, len(nodes)),
        # A connection (and a reused one's master) whose peer is gone (a re-addressing, a
        # node off the network) ends within ~30 s rather than salt-ssh's 3 x 60 s.
        "ssh_keepalive_interval": 5,
        "ssh_keepalive_count_max": 6,
        "log_level_logfile": "info",
    }
    (SALT_DIR / "master").write_text(yaml.safe_dump(master, sort_keys=False))
    # For `salt-call --local` on the management node (validation without touching hosts).
    minion = {k: v for k, v in master.items() if k not in ("ssh_log_file",)}
    minion.update(id="management", file_client="local", log_file=str(SALT_DIR / "minion.log"))
    (SALT_DIR / "minion").write_text(yaml.safe_dump(minion, sort_keys=False))
    roster = {}
    for n in nodes:
        roster[n.name] = {
            "host": n.ip,
            "user": "root",
            "priv": str(paths.SSH_KEY),
            # Root's interpreter shims on the controller must not leak into the target.
            "set_path": "/usr/sbin:/usr/bin:/sbin:/bin",
            # One SSH connection per node and run (salt-ssh opens five or six: the thin
            # check, the extension modules, the state tarball, two commands), kept open
            # for the next run: the fleet setup README recommends. (Keepalive and connect
            # timeout here would be ignored: salt-ssh puts its own -o first, and ssh keeps
            # the first value. They are ssh_keepalive_* in the master config.)
            "ssh_options": ["UserKnownHostsFile=/dev/null", "StrictHostKeyChecking=no",
                            *mux_options()],
        }
    (SALT_DIR / "roster").write_text(yaml.safe_dump(roster, sort_keys=False))
    saltfile = {
        "salt-ssh": {
            "config_dir": str(SALT_DIR),
            "roster_file": str(SALT_DIR / "roster"),
            "runner_dirs": [str(paths.REPO_ROOT / "_runners")],
            "ignore_host_keys": True,
            "ssh_max_procs": max(8, len(nodes)),
        }
    }
    (SALT_DIR / "Saltfile").write_text(yaml.safe_dump(saltfile, sort_keys=False))
    (PILLAR_DIR / "top.sls").write_text("base:\n  '*':\n    - kvmcluster\n")
    (SALT_DIR / "states" / "labslow.sls").write_text(SLOW_SLS)
    # A highstate of the formula beside one unrelated state (a node's failed preflight
    # stops kvmcluster there, never the rest of its highstate).
    (SALT_DIR / "states" / "top.sls").write_text(
        "base:\n  '*':\n    - kvmcluster\n    - labunrelated\n")
    (SALT_DIR / "states" / "labunrelated.sls").write_text(UNRELATED_SLS)
    pillar = lab_pillar(nodes)
    if extra_pillar:
        pillar = extra_pillar
    (PILLAR_DIR / "kvmcluster.sls").write_text(yaml.safe_dump(pillar, sort_keys=False))


def set_pillar(data):
    """Replace the lab's pillar (tests use this for bad or changed pillar)."""
    (PILLAR_DIR / "kvmcluster.sls").write_text(yaml.safe_dump(data, sort_keys=False))


def salt_call_argv(*args):
    return [str(VENV_BIN / "salt-call"), "--local", f"--config-dir={SALT_DIR}", *args]


def salt_run_argv(*args):
    return ["ip", "netns", "exec", net.CONTROLLER, str(VENV_BIN / "salt-run"),
            f"--config-dir={SALT_DIR}", *args]


def salt_ssh_argv(*args):
    return ["ip", "netns", "exec", net.CONTROLLER, str(VENV_BIN / "salt-ssh"),
            f"--saltfile={SALT_DIR / 'Saltfile'}", *args]


def salt_run(*args, timeout=1800):
    """salt-run with the lab's master config (orchestration, runners), from the management
    node's namespace."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(salt_run_argv(*args), capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def salt_ssh(*args, timeout=1800, capture=True):
    """Run salt-ssh from the management node's namespace."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(salt_ssh_argv(*args), capture_output=capture, text=True,
                          timeout=timeout, env=env, check=False)
