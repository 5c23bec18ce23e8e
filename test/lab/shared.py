"""The lab's shared storage: a one-brick GlusterFS volume served from the controller's
namespace (on the lab bridge only) and mounted over FUSE at paths.SHARED, which every
container node binds at /mnt/secondary. A filesystem libvirt knows to be shared, as a
site's NFS, CephFS or GlusterFS is: VMs whose disks live there migrate without a copy.

Everything it starts is found again by its PID file and stopped by PID at `down`."""
import os
import signal
import subprocess
import time

from . import net, paths
from .run import run, say

DIR = paths.HOME / "gluster"
VOLUME = "labshared"
PIDFILE = DIR / "glusterd.pid"

VOLFILE = """volume management
    type mgmt/glusterd
    option working-directory {wd}
    option transport-type socket
    option transport.socket.bind-address {addr}
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
"""


def _cli(*args, timeout=60):
    # glusterd's CLI socket is /var/run/glusterd.socket whatever it is told: one lab at a
    # time, as everything else here.
    return subprocess.run(["ip", "netns", "exec", net.CONTROLLER, "gluster", "--mode=script",
                           *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _pid(path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, TypeError):
        return False


def start(timeout=60):
    """glusterd, the volume and the FUSE mount at paths.SHARED (an empty filesystem)."""
    for sub in ("wd", "brick", "log"):
        (DIR / sub).mkdir(parents=True, exist_ok=True)
    vol = DIR / "glusterd.vol"
    vol.write_text(VOLFILE.format(wd=DIR / "wd", addr=net.GATEWAY))
    # Started in the controller's namespace: it listens on the lab bridge only.
    subprocess.Popen(["ip", "netns", "exec", net.CONTROLLER, "glusterd", "-N",
                      f"--volfile={vol}", f"--pid-file={PIDFILE}",
                      f"--log-file={DIR / 'log/glusterd.log'}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while _cli("pool", "list", timeout=10).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"glusterd did not answer within {timeout}s: "
                               f"{DIR / 'log/glusterd.log'}")
        time.sleep(0.5)
    for args in (("volume", "create", VOLUME, f"{net.GATEWAY}:{DIR / 'brick'}", "force"),
                 ("volume", "start", VOLUME)):
        res = _cli(*args)
        if res.returncode != 0:
            raise RuntimeError(f"gluster {' '.join(args)}: {res.stdout}{res.stderr}")
    paths.SHARED.mkdir(mode=0o755, parents=True, exist_ok=True)
    # nsenter, not `ip netns exec`: the mount must land in this mount namespace (the one
    # the nodes' bind mounts come from); only the FUSE client's network is the lab's.
    run(["nsenter", f"--net=/run/netns/{net.CONTROLLER}", "mount", "-t", "glusterfs",
         "-o", f"log-file={DIR / 'log/client.log'}", f"{net.GATEWAY}:/{VOLUME}",
         paths.SHARED])
    say(f"shared storage: GlusterFS volume {VOLUME} at {paths.SHARED}")


def stop():
    """Unmount, stop the volume (its brick process ends) and glusterd, by PID."""
    if os.path.ismount(paths.SHARED):
        run(["umount", paths.SHARED], check=False, capture=True)
        if os.path.ismount(paths.SHARED):
            run(["umount", "-l", paths.SHARED], check=False, capture=True)
    pid = _pid(PIDFILE)
    if not _alive(pid):
        return
    _cli("volume", "stop", VOLUME, "force", timeout=30)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
