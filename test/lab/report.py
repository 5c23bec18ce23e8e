"""Running the formula on the lab and reading what Salt said, per node."""
import json
import re
import sys
import time

from . import control, net, paths, saltcfg, spec


def parse_json(stdout):
    """salt-ssh --out=json --static prints one JSON document."""
    start = stdout.find("{")
    if start < 0:
        raise RuntimeError(f"salt-ssh printed no JSON:\n{stdout[-3000:]}")
    return json.loads(stdout[start:])


def apply(sls="kvmcluster", *extra, timeout=2400, target="*"):
    """state.apply on the target (every node); returns (per-node results, proc)."""
    proc = saltcfg.salt_ssh(target, "state.apply", sls, "--out=json", "--static", *extra,
                            timeout=timeout)
    return parse_json(proc.stdout), proc


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
    control.up()
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
    for node, ok, changed, failed in sorted(summaries):
        print(f"  {node}: succeeded={ok} changed={changed or 0} failed={failed}")
    print(f"  state.apply took {apply_s:.0f}s; demo {time.monotonic() - t0:.0f}s in all")
    st = control.load_state()
    print("\n== reach the nodes")
    for n in spec.from_dicts(st["spec"]):
        print(f"  {n.name} ({n.kind}, {n.ip}):  make lab ARGS='ssh {n.name}'")
    print(f"  salt-ssh:  make lab ARGS=\"salt '*' test.ping\"   (Saltfile "
          f"{saltcfg.SALT_DIR / 'Saltfile'})")
    print("  stop it:   make lab-down")
    ok = proc.returncode == 0 and len(summaries) == len(st["spec"]) and all(
        f == "0" for *_, f in summaries)
    return 0 if ok else 1


def lab_home():
    return paths.HOME
