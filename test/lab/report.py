"""Running the formula on the lab and reading what Salt said, per node."""
import json
import re
import subprocess
import sys
import time

from . import control, guest, net, paths, saltcfg, spec


def parse_json(stdout):
    """salt-ssh --out=json --static prints one JSON document."""
    start = stdout.find("{")
    if start < 0:
        raise RuntimeError(f"salt-ssh printed no JSON:\n{stdout[-3000:]}")
    return json.loads(stdout[start:])


BRIDGE_STATE = "kvmcluster_network_|-kvmcluster-network-bridge-managed_|-"
# What the management node confirmed after each apply: [{node: confirm result}].
CONFIRMS = []


def took_over(node_result):
    """Whether this node's run applied a network transaction that now awaits confirmation
    from the management node (one the node confirmed itself does not)."""
    if not isinstance(node_result, dict):
        return False
    return any(k.startswith(BRIDGE_STATE) and v.get("result") is True and v.get("changes")
               and v["changes"].get("runtime", {}).get("confirmation", {}).get("by")
               == "management" for k, v in node_result.items())


TXN_PY = r"""
import glob, json
last = sorted(glob.glob("/var/lib/kvmcluster/network/txn/*"))[-1:]
print(json.dumps([dict(json.load(open(d + "/phase.json")), id=d.rsplit("/", 1)[1])
                  for d in last]))
"""


def confirm(nodes, salt=None):
    """The management node reconnects to ``nodes`` and confirms their network change."""
    salt = salt or (lambda *a: saltcfg.salt_ssh(*a, timeout=300))
    proc = salt("-L", ",".join(sorted(nodes)), "kvmcluster_network.confirm", "--out=json",
                "--static")
    got = parse_json(proc.stdout)
    CONFIRMS.append(got)
    bad = {n: got.get(n) for n in nodes
           if not (isinstance(got.get(n), dict) and got[n].get("confirmed"))}
    if bad:
        raise RuntimeError(f"network change not confirmed: {bad}")
    return got


def apply(sls="kvmcluster", *extra, timeout=2400, target="*", confirm_network=False):
    """state.apply on the target (every node), the one command an operator runs; with
    ``confirm_network`` also the management node's confirmation of a change that waits for
    it (re-addressing); returns (per-node results, proc)."""
    proc = saltcfg.salt_ssh(target, "state.apply", sls, "--out=json", "--static", *extra,
                            timeout=timeout)
    results = parse_json(proc.stdout)
    pending = [n for n, r in results.items() if took_over(r)]
    if confirm_network and pending:
        confirm(pending)
    return results, proc


def summarize(node_result):
    """Counts of one node's state results: states, failed, changed (and the changed IDs)."""
    if not isinstance(node_result, dict):
        return {"states": 0, "failed": 1, "changed": 0, "changed_ids": [],
                "errors": node_result}
    if "return" in node_result and isinstance(node_result.get("return"), (dict, list, str)) \
            and "retcode" in node_result:
        return summarize(node_result["return"])
    failed = [k for k, v in node_result.items() if isinstance(v, dict) and v.get("result") is False]
    changed = [k.split("_|-")[1] for k, v in node_result.items()
               if isinstance(v, dict) and v.get("changes")]
    return {"states": len(node_result), "failed": len(failed), "changed": len(changed),
            "changed_ids": changed,
            "failures": {k.split("_|-")[1]: v.get("comment") for k, v in node_result.items()
                         if k in failed}}


def info():
    results, _ = apply("kvmcluster.info")
    out = {}
    for node, res in sorted(results.items()):
        if isinstance(res, dict):
            for key, val in res.items():
                if key.endswith("_|-reported"):
                    out[node] = json.loads(val["comment"])
        out.setdefault(node, {"error": res})
    return out


def demo():
    t0 = time.monotonic()
    st = control.up(management=1)
    # The VMs of the lab: the golden image on the shared storage, three guests in pillar.
    guest.install_golden(paths.SHARED)
    saltcfg.set_pillar(saltcfg.with_vms(saltcfg.lab_pillar(spec.from_dicts(st["spec"]))))
    print(f"\n== salt-ssh '*' state.apply kvmcluster  (from the management namespace "
          f"{net.CONTROLLER}, {net.MGMT_IP})", flush=True)
    t1 = time.monotonic()
    proc = saltcfg.salt_ssh("*", "state.apply", "kvmcluster", capture=True)
    apply_s = time.monotonic() - t1
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    print("\n== summary per node")
    summaries = re.findall(r"Summary for (\S+)\n-+\nSucceeded: (\d+)(?: \(changed=(\d+)\))?\n"
                           r"Failed:\s+(\d+)", proc.stdout)
    st = control.load_state()
    for node, ok, changed, failed in sorted(summaries):
        print(f"  {node}: succeeded={ok} changed={changed or 0} failed={failed}")
    print("\n== the network transaction on each node (no second command was needed)")
    confirmed = 0
    hypervisors = [n for n in spec.from_dicts(st["spec"]) if "management" not in n.roles]
    for n in hypervisors:
        res = subprocess.run(
            ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
             "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
             "-o", "LogLevel=ERROR", f"root@{n.ip}", "python3 -"],
            input=TXN_PY, capture_output=True, text=True, timeout=60, check=False)
        last = (json.loads(res.stdout or "[]") or [{}])[-1]
        confirmed += last.get("phase") == "confirmed"
        print(f"  {n.name}: {last.get('phase', 'none')} ({last.get('detail', '')[:110]})")
    print("\n== names from the management node (dnsmasq on mgmt01), asked on each hypervisor")
    domain = saltcfg.lab_pillar(spec.from_dicts(st["spec"]))["kvmcluster"]["domain"]
    resolved = 0
    for n in hypervisors:
        peer = next(h for h in hypervisors if h.name != n.name) if len(hypervisors) > 1 else n
        res = subprocess.run(
            ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
             "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
             "-o", "LogLevel=ERROR", f"root@{n.ip}",
             f"getent hosts {peer.name}.{domain}; getent hosts {peer.ip}"],
            capture_output=True, text=True, timeout=60, check=False)
        lines = res.stdout.split("\n")
        resolved += res.returncode == 0 and peer.ip in res.stdout
        print(f"  on {n.name}: " + " | ".join(" ".join(ln.split()) for ln in lines if ln))
    print("\n== the VMs, by name from the management node, pinged from kvm01 (they boot in "
          "emulation: allow a minute)")
    reached = 0
    for vm, ip in saltcfg.VM_IPS.items():
        cmd = (f"for i in $(seq 1 60); do ping -c 1 -W 2 {vm}.{domain} >/dev/null && "
               f"getent hosts {vm}.{domain} && exit 0; sleep 1; done; exit 1")
        res = subprocess.run(
            ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
             "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
             "-o", "LogLevel=ERROR", f"root@{hypervisors[0].ip}", cmd],
            capture_output=True, text=True, timeout=240, check=False)
        reached += res.returncode == 0 and ip in res.stdout
        print(f"  {vm} on {saltcfg.LAB_VMS[vm]['node']}: "
              + (" ".join(res.stdout.split()) + " answers ping" if res.returncode == 0
                 else "no answer"))
    print("\n== the cluster as one system: salt-run kvmcluster.status ssh=True")
    status = saltcfg.salt_run("kvmcluster.status", "ssh=True", timeout=300)
    print("\n".join(ln for ln in status.stdout.splitlines() if not ln.startswith(
        ("errors:", "warnings:", "retcode:", "    "))).strip())
    print(f"  (exit {status.returncode})")
    print(f"  state.apply took {apply_s:.0f}s; demo {time.monotonic() - t0:.0f}s in all")
    print("\n== reach the nodes")
    for n in spec.from_dicts(st["spec"]):
        print(f"  {n.name} ({n.kind}, {n.ip}):  make lab ARGS='ssh {n.name}'")
    print(f"  salt-ssh:  make lab ARGS=\"salt '*' test.ping\"   (Saltfile "
          f"{saltcfg.SALT_DIR / 'Saltfile'})")
    print("  stop it:   make lab-down")
    ok = proc.returncode == 0 and status.returncode == 0 and confirmed == len(hypervisors) and \
        resolved == len(hypervisors) and reached == len(saltcfg.VM_IPS) and \
        len(summaries) == len(st["spec"]) and all(f == "0" for *_, f in summaries)
    return 0 if ok else 1


def lab_home():
    return paths.HOME
