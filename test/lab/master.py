"""Master mode for the lab: a salt-master on the management namespace, salt-minions on the
nodes, installed offline from wheels built on the host, keys accepted by name.

Pillar is laid out the way a master-mode operator would: the cluster in one file targeted
at every node, and one file per node (targeted by minion id) for that node's overrides.
"""
import subprocess
import time

import yaml

from . import net, paths
from .run import run, say

MASTER_DIR = paths.HOME / "salt-master"
PILLAR_DIR = MASTER_DIR / "pillar"
STATES_DIR = MASTER_DIR / "states"
VENV_BIN = paths.REPO_ROOT / ".venv" / "bin"
SALT_PIN = "salt==3008.4"
MINION_HOME = "/opt/kvmcluster-minion"
WHEELS = paths.CACHE / "wheels"

# The minion runs on a Python of its own, as onedir minions do: a virtualenv without the
# system's site-packages, so the distribution's python3-libvirt is not importable there and
# the formula has to build libvirt-python into it.
MINION_VENV = f"{MINION_HOME}/venv"
MINION_UNIT = f"""[Unit]
Description=Salt minion (lab, from wheels, in its own Python environment)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={MINION_VENV}/bin/python -c "import salt.scripts; salt.scripts.salt_minion()"
Restart=on-failure
KillMode=process

[Install]
WantedBy=multi-user.target
"""


def wheels():
    """Wheels of Salt and its dependencies (and pip), built once on the host."""
    done = WHEELS / ".done"
    if not done.exists():
        WHEELS.mkdir(parents=True, exist_ok=True)
        say("building Salt wheels for the minions")
        run([VENV_BIN / "pip", "wheel", "-q", "-w", WHEELS, SALT_PIN])
        run([VENV_BIN / "pip", "download", "-q", "--no-deps", "-d", WHEELS, "pip"])
        done.write_text(SALT_PIN)
    return WHEELS


def write_config(nodes, cluster_pillar):
    for d in (PILLAR_DIR / "kvmcluster" / "nodes", STATES_DIR, MASTER_DIR / "pki"):
        d.mkdir(parents=True, exist_ok=True)
    conf = {
        "root_dir": str(MASTER_DIR / "root"),
        "pki_dir": str(MASTER_DIR / "pki"),
        "cachedir": str(MASTER_DIR / "root" / "cache"),
        "sock_dir": str(MASTER_DIR / "root" / "sock"),
        "pidfile": str(MASTER_DIR / "root" / "salt-master.pid"),
        "log_file": str(MASTER_DIR / "master.log"),
        "interface": net.MGMT_IP,
        "file_roots": {"base": [str(STATES_DIR),
                                str(paths.formula_root(MASTER_DIR / "formula"))]},
        "pillar_roots": {"base": [str(PILLAR_DIR)]},
        "auto_accept": False,
        "state_output": "changes",
        # Debug in the log file: the lab looks there for what must never be logged.
        "log_level_logfile": "debug",
    }
    (MASTER_DIR / "master").write_text(yaml.safe_dump(conf, sort_keys=False))
    (STATES_DIR / "top.sls").write_text("base:\n  '*':\n    - kvmcluster\n")
    top = ["base:", "  '*':", "    - kvmcluster.cluster"]
    for n in nodes:
        top += [f"  '{n.name}':", f"    - kvmcluster.nodes.{n.name}"]
        node_file = PILLAR_DIR / "kvmcluster" / "nodes" / f"{n.name}.sls"
        if not node_file.exists():
            node_file.write_text(f"# Overrides for {n.name} only (targeted by minion id).\n{{}}\n")
    (PILLAR_DIR / "top.sls").write_text("\n".join(top) + "\n")
    (PILLAR_DIR / "kvmcluster" / "cluster.sls").write_text(
        yaml.safe_dump(cluster_pillar, sort_keys=False))


def set_node_pillar(node, data):
    (PILLAR_DIR / "kvmcluster" / "nodes" / f"{node}.sls").write_text(
        yaml.safe_dump(data, sort_keys=False))


def master_argv():
    return ["ip", "netns", "exec", net.CONTROLLER, str(VENV_BIN / "salt-master"),
            f"--config-dir={MASTER_DIR}", "--log-level=warning"]


def salt_argv(*args):
    return ["ip", "netns", "exec", net.CONTROLLER, str(VENV_BIN / "salt"),
            f"--config-dir={MASTER_DIR}", *args]


def salt(*args, timeout=2400):
    return subprocess.run(salt_argv(*args), capture_output=True, text=True, check=False,
                          timeout=timeout)


def salt_run(*args, timeout=600):
    """salt-run with the lab master's configuration (its runners synced from file_roots)."""
    return subprocess.run(["ip", "netns", "exec", net.CONTROLLER, str(VENV_BIN / "salt-run"),
                           f"--config-dir={MASTER_DIR}", *args],
                          capture_output=True, text=True, check=False, timeout=timeout)


def salt_key(*args):
    return subprocess.run(["ip", "netns", "exec", net.CONTROLLER, str(VENV_BIN / "salt-key"),
                           f"--config-dir={MASTER_DIR}", *args],
                          capture_output=True, text=True, check=False, timeout=60)


def _ssh(n, command, input_bytes=None, timeout=300):
    argv = ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
            "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "LogLevel=ERROR", f"root@{n.ip}", command]
    res = subprocess.run(argv, input=input_bytes, capture_output=True, check=False,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{n.name}: {command}: {res.stderr.decode()[-2000:]}")
    return res.stdout.decode()


def install_minion(n):
    """Install the minion from the host's wheels (the node has no route to PyPI)."""
    tarball = subprocess.run(["tar", "-C", str(wheels()), "-c", "."], capture_output=True,
                             check=True).stdout
    pip = next(wheels().glob("pip-*.whl")).name
    _ssh(n, f"mkdir -p {MINION_HOME}/wheels && tar -C {MINION_HOME}/wheels -x", tarball)
    _ssh(n, f"python3 -m venv --without-pip {MINION_VENV} && {MINION_VENV}/bin/python "
            f"{MINION_HOME}/wheels/{pip}/pip install -q --no-index --find-links "
            f"{MINION_HOME}/wheels {SALT_PIN} pip", timeout=600)
    conf = yaml.safe_dump({"master": net.MGMT_IP, "id": n.name, "log_level_logfile": "debug"})
    _ssh(n, "mkdir -p /etc/salt/minion.d && cat > /etc/salt/minion.d/lab.conf",
         conf.encode())
    _ssh(n, "cat > /etc/systemd/system/salt-minion.service", MINION_UNIT.encode())
    _ssh(n, "systemctl daemon-reload && systemctl enable --now salt-minion.service")


def accept_keys(nodes, timeout=120):
    """Accept each node's key by its name, once it has asked (never auto_accept)."""
    deadline = time.monotonic() + timeout
    pending = {n.name for n in nodes}
    while pending and time.monotonic() < deadline:
        listed = yaml.safe_load(salt_key("--list=unaccepted", "--out=yaml").stdout or "{}")
        for name in sorted(pending & set(listed.get("minions_pre", []))):
            res = salt_key("--accept", name, "--yes")
            if res.returncode == 0:
                pending.discard(name)
        time.sleep(1)
    if pending:
        raise RuntimeError(f"minion keys never arrived: {sorted(pending)}")


def setup(nodes, cluster_pillar):
    """Install minions, accept their keys, sync the formula's modules, ping them."""
    for n in nodes:
        say(f"installing salt-minion on {n.name}")
        install_minion(n)
    accept_keys(nodes)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        res = salt("*", "saltutil.sync_all", "--out=yaml", "--timeout=30")
        synced = yaml.safe_load(res.stdout or "{}") or {}
        if all(isinstance(synced.get(n.name), dict) for n in nodes):
            break
        time.sleep(2)
    else:
        raise RuntimeError(f"saltutil.sync_all did not answer from every minion: {res.stdout}")
    say("master mode ready: " + ", ".join(n.name for n in nodes))
