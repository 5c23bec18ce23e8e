"""Bringing a lab up and down.

`up` prepares the network and the nodes' disks, then starts a supervisor process that owns
every long-running lab process (nodes, the package repository server) as its children and
ends them by PID on `down`. State (PIDs, mounts) is kept in a JSON file so that `down`
works after a crash of anything, the supervisor included.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from . import image, master, net, netprep, nodes, paths, saltcfg, shared, spec
from .run import run, say

REPO_PORT = 8080
STOP_GRACE = 40  # seconds a node gets to shut down cleanly before it is killed
NSPAWN_REBOOT = 133


def load_state():
    if paths.STATE_FILE.exists():
        return json.loads(paths.STATE_FILE.read_text())
    return {}


def save_state(state):
    paths.HOME.mkdir(parents=True, exist_ok=True)
    tmp = paths.STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.rename(paths.STATE_FILE)


def alive(pid):
    """True if pid runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def same_process(rec):
    """A recorded {pid, start} still names the process we started (PIDs get reused)."""
    return rec and alive(rec["pid"]) and start_time(rec["pid"]) == rec.get("start")


def record(pid):
    return {"pid": pid, "start": start_time(pid)}


def wait_port(ip, port, deadline):
    """Wait for a TCP port from inside the controller namespace."""
    probe = ("import socket,sys\ns=socket.socket();s.settimeout(2)\n"
             f"sys.exit(s.connect_ex(('{ip}',{port})))")
    while time.monotonic() < deadline:
        res = subprocess.run(["ip", "netns", "exec", net.CONTROLLER, sys.executable, "-c", probe],
                             check=False)
        if res.returncode == 0:
            return True
        time.sleep(1)
    return False


# ---- up -----------------------------------------------------------------------------

def up(containers=3, vms=0, timeout=None, with_master=False, backends=(), management=0,
       migration_net=False, selinux=()):
    t0 = time.monotonic()
    state = load_state()
    if state and same_process(state.get("supervisor")):
        say("lab already up; reusing it (`down` first for a new one)")
        return state
    if state or net.ours():
        say("cleaning up a previous lab that was not brought down")
        down()
    image.build()
    image.lab_files(image.rootfs())
    rack = spec.make(containers, vms, backends, management, selinux)
    say(f"network: lab bridge {net.BRIDGE} in namespace {net.SWITCH}, subnet {net.SUBNET}")
    net.create_switch()
    # The shared storage every container node sees at the same path, fresh for each lab:
    # a GlusterFS volume (a filesystem libvirt knows to be shared).
    shutil.rmtree(paths.SHARED, ignore_errors=True)
    shutil.rmtree(shared.DIR, ignore_errors=True)
    save_state({"spec": [n.to_dict() for n in rack], "mounts": [], "children": {},
                "master": with_master})
    if any(n.kind == "container" for n in rack):
        shared.start()
    for n in rack:
        say(f"preparing {n.kind} node {n.name} ({n.ip})")
        nodes.prepare(n, migration_net=migration_net)
        st = load_state()
        if n.kind == "container":
            st["mounts"].append(str(nodes.node_dir(n) / "root"))
        save_state(st)
    saltcfg.write(rack)
    if with_master:
        master.wheels()
        master.write_config(rack, saltcfg.lab_pillar(rack))
    log = open(paths.HOME / "supervisor.log", "ab")
    sup = subprocess.Popen([sys.executable, "-m", "lab", "_supervise"],
                           cwd=str(paths.REPO_ROOT / "test"), stdout=log, stderr=log,
                           stdin=subprocess.DEVNULL, start_new_session=True,
                           env={**os.environ, "PYTHONPATH": str(paths.REPO_ROOT / "test")})
    st = load_state()
    st["supervisor"] = record(sup.pid)
    save_state(st)
    budget = timeout or (60 + 240 * bool(vms))
    deadline = time.monotonic() + budget
    for n in rack:
        say(f"waiting for sshd on {n.name} ({n.ip})")
        if not wait_port(n.ip, 22, deadline):
            raise RuntimeError(f"{n.name} did not answer on {n.ip}:22 within {budget}s; "
                               f"see {nodes.node_dir(n)}")
        # sshd answers before boot is over; a node is up when systemd says so.
        _wait_booted(n, deadline)
    for n in rack:
        if n.backend != "ifupdown":
            say(f"{n.name}: eth0 moves to {n.backend}")
            netprep.prepare(n, lambda cmd, t, n=n: _node_ssh(n, cmd, t))
    if with_master:
        master.setup(rack, saltcfg.lab_pillar(rack))
    say(f"lab up: {len(rack)} nodes in {time.monotonic() - t0:.0f}s")
    return load_state()


def _node_ssh(n, command, timeout):
    return subprocess.run(
        ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
         "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "LogLevel=ERROR", f"root@{n.ip}", command],
        capture_output=True, text=True, check=False, timeout=timeout)


def _wait_booted(n, deadline):
    """Wait for systemd to finish booting the node; retry failed units once.

    Container nodes on this host's hybrid cgroup setup now and then fail a oneshot unit
    with status 219/CGROUP at boot; starting it again succeeds.
    """
    for attempt in range(2):
        left = max(5, int(deadline - time.monotonic()))
        res = _node_ssh(n, f"timeout {left} systemctl is-system-running --wait; "
                           "systemctl --failed --plain --no-legend", left + 15)
        if res.stdout.split()[:1] == ["running"]:
            return
        failed = [line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip()]
        if attempt == 0 and failed:
            say(f"{n.name}: retrying units that failed at boot: {', '.join(failed)}")
            _node_ssh(n, "systemctl reset-failed; systemctl start " + " ".join(failed), 60)
    raise RuntimeError(f"{n.name} did not boot cleanly: {res.stdout.strip()} {res.stderr.strip()}")


def supervise():
    """Own the lab's processes: start them, wait on them, end them on SIGTERM."""
    st = load_state()
    rack = spec.from_dicts(st["spec"])
    procs = {}
    repo = subprocess.Popen(
        ["ip", "netns", "exec", net.CONTROLLER, sys.executable, "-m", "http.server",
         str(REPO_PORT), "--bind", net.GATEWAY, "--directory", str(image.repo_dir())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs["repo"] = repo
    if st.get("master"):
        logf = open(paths.HOME / "salt-master.out", "ab")
        procs["salt-master"] = subprocess.Popen(master.master_argv(), stdout=logf, stderr=logf,
                                                stdin=subprocess.DEVNULL)
    def boot(n):
        argv, env = nodes.argv_env(n)
        logf = open(nodes.node_dir(n) / "node.log", "ab")
        return subprocess.Popen(argv, env=env, stdout=logf, stderr=logf,
                                stdin=subprocess.DEVNULL)

    for n in rack:
        procs[n.name] = boot(n)
    st["children"] = {name: record(p.pid) for name, p in procs.items()}
    save_state(st)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    by_name = {n.name: n for n in rack}
    while not stopping:
        for name, p in list(procs.items()):
            # systemd-nspawn exits 133 when the node reboots: boot it again (as
            # systemd-nspawn@.service does with RestartForceExitStatus=133).
            if p.poll() == NSPAWN_REBOOT and name in by_name and not stopping:
                net.reset_links(net.PREFIX + name)
                procs[name] = boot(by_name[name])
                st = load_state()
                st["children"][name] = record(procs[name].pid)
                save_state(st)
        time.sleep(0.5)
    # Orderly: nspawn turns SIGTERM into a clean poweroff of the node; qemu just stops.
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


# ---- down ---------------------------------------------------------------------------

def _netns_pids():
    """PIDs of processes living in one of the lab's network namespaces."""
    inodes = set()
    for ns in net.ours():
        try:
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
        except FileNotFoundError:
            pass
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}/ns/net").st_ino in inodes:
                    found.append(int(d))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                pass
    return found


def _lab_mounts():
    home = str(paths.HOME) + "/"
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh]
    return [p for p in points if p.startswith(home)]


def down():
    st = load_state()
    sup = st.get("supervisor")
    if same_process(sup):
        say("stopping nodes")
        os.kill(sup["pid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE + 15
        while alive(sup["pid"]) and time.monotonic() < deadline:
            time.sleep(0.5)
    for rec in st.get("children", {}).values():
        if same_process(rec):
            os.kill(rec["pid"], signal.SIGKILL)
    shared.stop()
    # Whatever still lives in a lab namespace (a node's init whose nspawn died) goes too.
    for _ in range(10):
        pids = [p for p in _netns_pids() if alive(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    for point in sorted(set(st.get("mounts", [])) | set(_lab_mounts()), reverse=True):
        run(["umount", point], check=False, capture=True)
        if os.path.ismount(point):
            run(["umount", "-l", point], check=False, capture=True)
    net.destroy()
    for n in spec.from_dicts(st.get("spec", [])):
        nodes.remove(n)
    # The master's keys belong to this lab's minions; a new lab has new ones.
    shutil.rmtree(master.MASTER_DIR, ignore_errors=True)
    shutil.rmtree(paths.SHARED, ignore_errors=True)
    shutil.rmtree(shared.DIR, ignore_errors=True)
    if paths.STATE_FILE.exists():
        paths.STATE_FILE.unlink()
    say("lab down")


def status():
    st = load_state()
    rows = {"up": bool(st) and same_process(st.get("supervisor")), "namespaces": net.ours(),
            "mounts": _lab_mounts(), "nodes": []}
    for n in spec.from_dicts(st.get("spec", [])):
        rec = st.get("children", {}).get(n.name)
        rows["nodes"].append({"name": n.name, "kind": n.kind, "ip": n.ip,
                              "running": bool(rec) and same_process(rec)})
    return rows
