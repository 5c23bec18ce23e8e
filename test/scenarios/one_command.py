"""The mission's one command on a fresh lab, alone: `salt-ssh '*' state.apply kvmcluster`,
no confirmation from anyone, then a wait of rollback_timeout + 30 s, then every node is
checked (address on br0, last transaction, nothing rolled back) and a second run counted.

    PYTHONPATH=test:test/integration .venv/bin/python test/scenarios/one_command.py --nodes 12
    PYTHONPATH=test:test/integration .venv/bin/python test/scenarios/one_command.py --nodes 3 \
        --backends ifupdown,networkmanager,netplan --slow kvm01=120

Prints one JSON document with the figures. Not part of `make test` (the 12-node run takes
about ten minutes here)."""
import argparse
import json
import sys
import time

from lab import control, report, saltcfg, spec
from labtest import ssh

CHECK_PY = r"""
import glob, json, subprocess
ip = lambda *a: json.loads(subprocess.run(["ip", "-j", *a], capture_output=True,
                                          text=True).stdout or "[]")
addrs = {l["ifname"]: [a["local"] for a in l["addr_info"] if a.get("scope") == "global"]
         for l in ip("addr", "show")}
txns = [dict(json.load(open(d + "/phase.json")), id=d.rsplit("/", 1)[1])
        for d in sorted(glob.glob("/var/lib/kvmcluster/network/txn/*"))]
print(json.dumps({"br0": addrs.get("br0", []), "eth0": addrs.get("eth0", []), "txns": txns}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--backends", default="")
    ap.add_argument("--slow", default="", help="NODE=SECONDS: sleep before its network state")
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    a = ap.parse_args()
    backends = [b for b in a.backends.split(",") if b]
    control.down()
    t0 = time.monotonic()
    state = control.up(containers=a.nodes, backends=backends)
    nodes = spec.from_dicts(state["spec"])
    up_s = time.monotonic() - t0
    pillar = saltcfg.lab_pillar(nodes)
    sls = "kvmcluster"
    if a.slow:
        node, secs = a.slow.split("=")
        pillar["lab_slow"] = {node: int(secs)}
        sls = "labslow"
    saltcfg.set_pillar(pillar)
    timeout = pillar["kvmcluster"]["network"]["rollback_timeout"]
    t0 = time.monotonic()
    first, proc = report.apply(sls)
    first_s = time.monotonic() - t0
    end = time.monotonic()
    time.sleep(timeout + 30)
    waited = time.monotonic() - end
    rows = {}
    for n in nodes:
        got = json.loads(ssh(n.ip, "python3 -", input=CHECK_PY, timeout=60))
        last = got["txns"][-1] if got["txns"] else {}
        rows[n.name] = {
            "backend": n.backend, "br0": got["br0"], "eth0": got["eth0"],
            "last": {k: last.get(k) for k in ("phase", "by", "detail")},
            "rolled_back": sum(t["phase"] == "rolled-back" for t in got["txns"]),
            "first_run": report.summarize(first.get(n.name, {})),
        }
    t0 = time.monotonic()
    second, _ = report.apply(sls)
    second_s = time.monotonic() - t0
    for n in nodes:
        # The scenario's own sleep (cmd.run) reports a change on every run; not the formula's.
        ids = report.summarize(second.get(n.name, {}))["changed_ids"]
        rows[n.name]["second_run_changed"] = len([i for i in ids
                                                  if i != "lab-slow-before-network"])
        rows[n.name]["first_run"] = {k: rows[n.name]["first_run"][k]
                                     for k in ("states", "failed", "changed")}
    ok = all(r["br0"] and n.ip in r["br0"] and r["rolled_back"] == 0
             and r["last"]["phase"] == "confirmed" and r["second_run_changed"] == 0
             for n, r in zip(nodes, rows.values()))
    print(json.dumps({"nodes": len(nodes), "slow": a.slow or None, "lab_up_s": round(up_s, 1),
                      "first_apply_s": round(first_s, 1), "first_apply_rc": proc.returncode,
                      "waited_after_s": round(waited, 1), "rollback_timeout": timeout,
                      "second_apply_s": round(second_s, 1), "ok": ok, "per_node": rows},
                     indent=1))
    if not a.keep:
        control.down()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
