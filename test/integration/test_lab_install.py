"""docs/install.rst, run as it stands: its marked steps, in order, on a bare management node
(mgmt01: no Salt, no formula) against two fresh hypervisor nodes that only have root SSH
with a key. A local mirror stands in for the internet: the wheels of Salt (PyPI) and a git
repository of this tree (the formula's remote). The only step not in the guide is the one
it leaves to the operator: writing the site's pillar. Replaces the lab with its own."""
import re
import shlex
import subprocess
import time

import pytest
import yaml

from lab import control, guest, master, net, nodes, paths, saltcfg
from labtest import Lab, record_timing, show

GUIDE = paths.REPO_ROOT / "docs" / "install.rst"
MGMT = "mgmt01"
STEP = re.compile(r"^\.\. install-step: ([a-z0-9-]+)\n\n\.\. code-block:: bash\n\n"
                  r"((?:    .*\n|\n)+)", re.M)
# The internet, as the guide's commands reach it: pip's index and the formula's remote.
MIRROR_ENV = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/srv/mirror/wheels",
              "FORMULA_REPO": "file:///srv/mirror/kvmcluster.git"}
VM = {"web1": {"node": "kvm01", "image": "tiny", "ip": saltcfg.VM_IPS["vm1"]}}


def steps(text=None):
    """The guide's marked code blocks: [(name, script)], in order."""
    text = GUIDE.read_text() if text is None else text
    out = []
    for name, body in STEP.findall(text):
        lines = [ln[4:] if ln.startswith("    ") else ln for ln in body.splitlines()]
        out.append((name, "\n".join(lines).strip() + "\n"))
    return out


def test_the_guide_has_its_steps():
    names = [n for n, _ in steps()]
    assert names == ["salt", "formula", "config", "pillar", "validate", "roster-root",
                     "host-keys", "first-apply", "roster-account", "status", "vm"], names
    # A step that is not a bash block (a typo in the marker) would silently not run.
    assert GUIDE.read_text().count(".. install-step:") == len(names)


def _mirror(root):
    """/srv/mirror on the management node: Salt's wheels and a git remote of this tree
    (what is checked out here, committed or not)."""
    mirror = root / "srv/mirror"
    mirror.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(master.wheels()), str(mirror / "wheels")], check=True)
    work = mirror / "work"
    files = subprocess.run(["git", "-C", str(paths.REPO_ROOT), "ls-files", "-z", "--cached",
                            "--others", "--exclude-standard"], capture_output=True,
                           check=True).stdout
    subprocess.run(["tar", "-C", str(paths.REPO_ROOT), "--null", "-T", "-", "-cf",
                    str(mirror / "tree.tar")], input=files, check=True)
    work.mkdir()
    subprocess.run(["tar", "-C", str(work), "-xf", str(mirror / "tree.tar")], check=True)
    git = ["git", "-C", str(work), "-c", "user.name=lab", "-c", "user.email=lab@lab"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "formula"]):
        subprocess.run(git + argv, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirror / "kvmcluster.git")],
                   check=True)
    subprocess.run(["rm", "-rf", str(work), str(mirror / "tree.tar")], check=True)


@pytest.fixture(scope="module")
def bare_lab():
    control.down()
    state = control.up(containers=2, management=1)
    lab = Lab(state)
    root = nodes.node_dir(next(n for n in lab.nodes if n.name == MGMT)) / "root"
    _mirror(root)
    # The key that logs in to every node as root (the guide's precondition).
    ssh = root / "root/.ssh"
    (ssh / "id_ed25519").write_bytes(paths.SSH_KEY.read_bytes())
    (ssh / "id_ed25519").chmod(0o600)
    guest.install_golden(paths.SHARED)
    yield lab
    control.down()


def _site_pillar(lab):
    """What the operator writes into /srv/pillar/kvmcluster.sls for this rack."""
    return yaml.safe_dump(saltcfg.with_vms(lab.pillar, VM), sort_keys=False)


def _run(lab, name, script, timeout=1800):
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in MIRROR_ENV.items())
    t0 = time.monotonic()
    res = subprocess.run(
        ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
         "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "LogLevel=ERROR", f"root@{lab.ip[MGMT]}",
         f"env {env} HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
         " bash -euo pipefail -s"],
        input=script, capture_output=True, text=True, timeout=timeout, check=False)
    return res, time.monotonic() - t0


def test_the_guide_takes_a_bare_management_node_to_a_running_cluster(bare_lab):
    lab = bare_lab
    bare = lab.ssh(MGMT, "command -v salt-ssh salt-call || echo none; ls /srv/formulas 2>&1 "
                         "|| true")
    assert "none" in bare and "No such file" in bare, bare  # nothing of Salt's yet
    log, outputs, total = [], {}, 0.0
    for name, script in steps():
        res, took = _run(lab, name, script)
        total += took
        outputs[name] = res.stdout + res.stderr
        log.append(f"{name:15} {took:7.1f} s  exit {res.returncode}")
        assert res.returncode == 0, ("\n".join(log) + f"\nstep {name} failed "
                                     f"({res.returncode}):\n{outputs[name][-4000:]}")
        if name == "pillar":
            # The step the guide leaves to the operator: the site's rack.
            lab.ssh(MGMT, "cat > /srv/pillar/kvmcluster.sls", input=_site_pillar(lab))
    record_timing("install guide: bare management node to status exit 0 and a VM by name",
                  total)
    show("install guide, step by step (docs/install.rst on mgmt01)", "\n".join(log)
         + f"\ntotal {total:.1f} s")
    show("install guide: the status table", outputs["status"][-3000:])
    show("install guide: what the first apply printed",
         f"{len(outputs['first-apply'].splitlines())} lines for 3 nodes (state_output: "
         f"changes, state_verbose: false); the second run, as the account: "
         f"{len(outputs['roster-account'].splitlines())} lines")
    assert "Warnings:" not in outputs["first-apply"], "a bare or unexpected warnings header"
    # The second run, as the account, changed nothing on any node.
    second = outputs["roster-account"]
    summaries = re.findall(r"Summary for (\S+)\n-+\nSucceeded: (\d+)(?: \(changed=(\d+)\))?"
                           r"\nFailed:\s+(\d+)", second)
    assert {s[0] for s in summaries} == {"mgmt01", "kvm01", "kvm02"}, second[-3000:]
    assert all(s[2] in ("", "0") and s[3] == "0" for s in summaries), summaries
    # Salt logged in as the account, with sudo, on that run.
    roster = yaml.safe_load(lab.ssh(MGMT, "cat /etc/salt/roster"))
    assert {e["user"] for e in roster.values()} == {"kvmadmin"}, roster
    assert all(e["sudo"] is True for e in roster.values())
    assert lab.ssh(MGMT, "stat -c %a /etc/salt/roster").strip() == "600"
    assert "3 received" in outputs["vm"], outputs["vm"][-2000:]
