"""Helpers of the lab tier: a real rack on this machine (see test/lab), driven over real
salt-ssh and ssh."""
import os
import subprocess
import sys

from lab import control, net, paths, report, saltcfg, spec


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
