"""Helpers of the lab tier: a real rack on this machine (see test/lab), driven over real
salt-ssh and ssh."""
import os
import subprocess
import sys

from lab import net, paths, report, saltcfg, spec


def ssh(node_ip, command, check=True, input=None, timeout=300):
    argv = ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
            "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"root@{node_ip}", command]
    res = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout,
                         check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{command!r} on {node_ip} failed ({res.returncode}): "
                             f"{res.stderr}{res.stdout}")
    return res.stdout


class Lab:
    def __init__(self, state):
        self.nodes = spec.from_dicts(state["spec"])
        self.ip = {n.name: n.ip for n in self.nodes}
        self.pillar = saltcfg.lab_pillar(self.nodes)

    def ssh(self, node, command, **kw):
        return ssh(self.ip[node], command, **kw)

    def apply(self, sls="kvmcluster", *extra):
        return report.apply(sls, *extra)

    def apply_on(self, node, sls="kvmcluster", *extra):
        return report.apply(sls, *extra, target=node)

    def validate(self):
        """`lab validate`: salt-call --local on the management node, no host touched."""
        return subprocess.run([sys.executable, "-m", "lab", "validate"], capture_output=True,
                              text=True, check=False, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(paths.REPO_ROOT / "test")})

    def set_pillar(self, data):
        saltcfg.set_pillar(data)

    def reset_pillar(self):
        saltcfg.set_pillar(self.pillar)


# The network backends of the container lab's nodes, in node order (one node each).
BACKENDS = ["ifupdown", "networkmanager", "netplan"]

# What a node looks like once the formula ran (fingerprint()): its managed files, account,
# addresses, socket, daemon and pools.
TIMINGS_FILE = "/tmp/kvmcluster-lab-timings.jsonl"

FINGERPRINT_PY = r"""
import hashlib, json, os, subprocess, libvirt
files = ["/etc/libvirt/libvirtd.conf", "/etc/libvirt/qemu.conf", "/etc/default/libvirtd",
         "/etc/sysctl.d/60-kvmcluster.conf", "/etc/modules-load.d/kvmcluster.conf",
         "/etc/systemd/system/libvirtd.socket.d/kvmcluster.conf",
         "/etc/systemd/system/libvirtd-ro.socket.d/kvmcluster.conf"]
out = {f: hashlib.sha256(open(f, "rb").read()).hexdigest()[:16] if os.path.exists(f) else None
       for f in files}
run = lambda *a: subprocess.run(a, capture_output=True, text=True).stdout.strip()
out["account"] = run("id", "kvmadmin")
out["addresses"] = run("ip", "-br", "-4", "addr")
out["bridge_ports"] = run("ip", "-br", "link", "show", "master", "br0").split()[:1]
out["libvirtd"] = run("systemctl", "is-active", "libvirtd.service")
st = os.stat("/run/libvirt/libvirt-sock")
out["socket_mode"] = oct(st.st_mode & 0o777)
c = libvirt.open("qemu:///system")
out["pools"] = sorted((p.name(), p.isActive(), p.autostart(),
                       p.XMLDesc(0).split("<path>")[1].split("</path>")[0])
                      for p in c.listAllStoragePools())
print(json.dumps(out, sort_keys=True))
"""


def fingerprint(lab, node):
    import json  # pylint: disable=import-outside-toplevel

    return json.loads(lab.ssh(node, "python3 -", input=FINGERPRINT_PY))


def record_timing(what, seconds):
    import json  # pylint: disable=import-outside-toplevel

    with open(TIMINGS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"what": what, "seconds": round(seconds, 1)}) + "\n")


SHOWN_FILE = "/tmp/kvmcluster-lab-shown.txt"


def show(title, text):
    """Keep what an issue asks to see (rules, listeners, leases) for the tier's summary."""
    with open(SHOWN_FILE, "a", encoding="utf-8") as fh:
        fh.write(f"-- {title}\n" + "\n".join(f"   {ln}" for ln in str(text).splitlines())
                 + "\n")


class SecretScan:
    """Looks for a secret where it must never be: every process's argv on this machine,
    sampled every 20 ms while the block runs (the lab's container nodes and its management
    namespace share this machine's process table), then in files and in texts.

    ``needles``: distinctive pieces of the secret (lines of a key's body)."""

    def __init__(self, needles, interval=0.02):
        self.needles = [n.encode() for n in needles if len(n) >= 20]
        assert self.needles, "nothing to look for"
        self.interval = interval
        self.samples = 0
        self.hits = []
        self._stop = None
        self._thread = None

    def _scan_procs(self):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    argv = fh.read()
            except OSError:
                continue  # gone meanwhile
            for n in self.needles:
                if n in argv:
                    self.hits.append(("argv", pid, argv[:120].replace(b"\0", b" ").decode(
                        errors="replace")))

    def __enter__(self):
        import threading  # pylint: disable=import-outside-toplevel

        self._stop = threading.Event()

        def loop():
            # Bounded: at most an hour of samples, whatever the block does.
            for _ in range(int(3600 / self.interval)):
                if self._stop.is_set():
                    return
                self._scan_procs()
                self.samples += 1
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def files(self, *roots, limit=64 << 20):
        """Every regular file under ``roots`` (not following links), read up to ``limit``
        bytes each: returns how many were read; matches go to ``hits``."""
        count = 0
        for root in roots:
            walk = [(os.path.dirname(root), [], [os.path.basename(root)])] \
                if os.path.isfile(root) else os.walk(root, followlinks=False)
            for dirpath, _dirs, names in walk:
                for name in names:
                    path = os.path.join(dirpath, name)
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    try:
                        with open(path, "rb") as fh:
                            data = fh.read(limit)
                    except OSError:
                        continue
                    count += 1
                    for n in self.needles:
                        if n in data:
                            self.hits.append(("file", path, ""))
        return count

    def assert_clean(self, title, files_read, **figures):
        """Shows what was looked at and asserts that the secret was nowhere, and that the
        looking was real (samples taken, files read, every figure above zero)."""
        extra = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in figures.items())
        show(title, f"argv samples: {self.samples}; files read: {files_read}; {extra}; "
                    f"occurrences: {len(self.hits)}")
        assert self.samples > 50 and files_read > 0 and all(figures.values()), figures
        assert self.hits == [], self.hits[:5]

    def text(self, what, text):
        data = text.encode() if isinstance(text, str) else text
        for n in self.needles:
            if n in data:
                self.hits.append(("output", what, ""))


def key_needles(private_key_text):
    """The body lines of an OpenSSH private key: what a leak of it would contain."""
    return [ln for ln in private_key_text.splitlines() if ln and not ln.startswith("-----")]


def debug_lines(log):
    """How many debug lines a Salt log file holds (the scan read a log at debug level)."""
    return sum(1 for ln in log.read_text(errors="replace").splitlines() if "[DEBUG" in ln)
