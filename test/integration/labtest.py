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
