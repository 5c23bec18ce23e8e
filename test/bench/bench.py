"""The benchmark (`make bench`, not part of `make test`): kvmcluster beside Salt's own floor,
a bare package install and the same work as a plain Ansible playbook, on the lab's
container nodes. Each measured run is timed on the wall clock and by the CPU the
management side spent in it (salt-ssh or ansible and their children); repeated runs
alternate between the things compared. Writes JSON and prints the table."""
import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab import control, master, net, paths, report, saltcfg

HERE = Path(__file__).resolve().parent
NOOP_SLS = "bench-noop-succeeded:\n  test.succeed_without_changes: []\n"
ANSIBLE_VENV = paths.CACHE / "bench-ansible-venv"
ANSIBLE_PIN = "ansible-core==2.17.7"


def ctl_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ns_cpu():
    """CPU seconds (own and reaped children's) of the processes now living in each lab
    namespace. In the management node's namespace only SSH's connection masters count
    (salt-ssh itself is this process's child; the lab's own servers are not measured)."""
    inode_ns = {}
    for ns in net.ours():
        try:
            inode_ns[os.stat(f"/run/netns/{ns}").st_ino] = ns
        except OSError:
            pass
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ns = inode_ns.get(os.stat(f"/proc/{d}/ns/net").st_ino)
            if ns is None:
                continue
            with open(f"/proc/{d}/stat", encoding="utf-8") as fh:
                comm, rest = fh.read().split(" (", 1)[1].rsplit(")", 1)
        except OSError:
            continue
        if ns == net.CONTROLLER and comm != "ssh":
            continue
        out[ns] = out.get(ns, 0) + sum(int(x) for x in rest.split()[11:15])
    return {k: v / os.sysconf("SC_CLK_TCK") for k, v in out.items()}


LAST_NODE_CPU = {"seconds": 0.0}


def timed(argv, env=None, timeout=3600):
    """(wall seconds, management-side CPU seconds, completed process); the CPU the nodes
    spent in the same run is left in LAST_NODE_CPU."""
    n0, c0, t0 = ns_cpu(), ctl_cpu(), time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    wall, c1, n1 = time.monotonic() - t0, ctl_cpu(), ns_cpu()
    delta = {k: v - n0.get(k, 0.0) for k, v in n1.items()}
    LAST_NODE_CPU["seconds"] = sum(v for k, v in delta.items() if k != net.CONTROLLER)
    return wall, c1 - c0 + delta.get(net.CONTROLLER, 0.0), proc


def salt_env():
    return dict(os.environ, PATH=f"{saltcfg.VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin")


def salt_ssh(*args):
    return timed(saltcfg.salt_ssh_argv(*args), env=salt_env())


def node_ssh(ip, command, timeout=1800):
    return subprocess.run(
        ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
         "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "LogLevel=ERROR", f"root@{ip}", command],
        capture_output=True, text=True, timeout=timeout, check=False)


def package_count(ip):
    out = node_ssh(ip, "dpkg-query -W -f='${Status}\\n' | grep -c 'install ok installed'")
    return int(out.stdout.strip() or 0)


def stats(values):
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def fresh_lab(nodes):
    control.down()
    st = control.up(containers=nodes)
    (saltcfg.SALT_DIR / "states" / "benchnoop.sls").write_text(NOOP_SLS)
    return [n["ip"] for n in st["spec"]]


def state_durations(stdout):
    """The slowest states of a salt-ssh JSON run: (ms, node, state id)."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return []
    out = []
    for node, states in data.items():
        if isinstance(states, dict):
            for key, res in states.items():
                if isinstance(res, dict) and "duration" in res:
                    out.append((round(float(res["duration"]), 1), node, key.split("_|-")[1]))
    return sorted(out, reverse=True)


def set_mux(on):
    """SSH connection reuse for salt-ssh through the roster's ssh_options (ControlMaster)."""
    import yaml  # pylint: disable=import-outside-toplevel

    path = saltcfg.SALT_DIR / "roster"
    roster = yaml.safe_load(path.read_text())
    for entry in roster.values():
        opts = [o for o in entry.get("ssh_options", []) if not o.startswith("Control")]
        entry["ssh_options"] = opts + saltcfg.mux_options(on)
    path.write_text(yaml.safe_dump(roster, sort_keys=False))


def mux_effect(runs, results, tag):
    """The converged no-op with and without SSH connection reuse, alternating."""
    series = {False: [], True: []}
    for _ in range(runs):
        for on in (False, True):
            set_mux(on)
            wall, _, proc = salt_ssh("*", "state.apply", "kvmcluster")
            if proc.returncode != 0:
                sys.exit(f"no-op (mux {on}) failed:\n{proc.stdout[-2000:]}")
            series[on].append(wall)
    set_mux(True)  # the lab's own setting
    results[f"kvmcluster_noop_no_mux_{tag}"] = stats(series[False])
    results[f"kvmcluster_noop_mux_{tag}"] = stats(series[True])


# The no-op rows, run alternating: Salt's floor (a ping, one state that does nothing) and
# the converged formula.
NOOP_ROWS = (("ping", ("*", "test.ping")),
             ("floor_sls", ("*", "state.apply", "benchnoop")),
             ("kvmcluster_noop", ("*", "state.apply", "kvmcluster", "--out=json", "--static")))


def noop_rows(run, runs, what):
    """NOOP_ROWS ``runs`` times through ``run`` (salt-ssh or the master's salt): the wall
    times per row, and (management CPU, node CPU, stdout) of each kvmcluster run."""
    series = {name: [] for name, _ in NOOP_ROWS}
    noop = []
    for _ in range(runs):
        for name, argv in NOOP_ROWS:
            wall, cpu, proc = run(*argv)
            if proc.returncode != 0:
                sys.exit(f"{what} {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            series[name].append(wall)
            if name == "kvmcluster_noop":
                noop.append((cpu, LAST_NODE_CPU["seconds"], proc.stdout))
    return series, noop


def converge_and_noop(nodes, runs, results, tag):
    ips = fresh_lab(nodes)
    before = package_count(ips[0])
    wall, cpu, proc = salt_ssh("*", "state.apply", "kvmcluster", "--out=json", "--static")
    if proc.returncode != 0:
        sys.exit(f"first apply failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    after = package_count(ips[0])
    results[f"first_apply_{tag}"] = {"seconds": round(wall, 1), "ctl_cpu_s": round(cpu, 1),
                                     "nodes": nodes, "packages_before": before,
                                     "packages_after": after}
    series, noop = noop_rows(salt_ssh, runs, "salt-ssh")
    for name, values in series.items():
        results[f"{name}_{tag}"] = stats(values)
    results[f"kvmcluster_noop_ctl_cpu_per_node_{tag}"] = round(
        statistics.median(c for c, _, _ in noop) / nodes, 2)
    results[f"kvmcluster_noop_node_cpu_per_node_{tag}"] = round(
        statistics.median(n for _, n, _ in noop) / nodes, 2)
    results[f"slowest_noop_states_{tag}"] = state_durations(noop[-1][2])[:8]
    if nodes <= 3:
        mux_effect(runs, results, tag)
        anatomy(ips, results, tag)
    return ips


SSH_LOGGER = """#!/bin/bash
# Times one {tool} call of salt-ssh and names what it carried (benchmark only).
t0=$(date +%s.%N); /usr/bin/{tool} "$@"; rc=$?; t1=$(date +%s.%N)
what=other
for a in "$@"; do case "$a" in
  *salt-thin.tgz) what=thin;; *salt-ext_mods.tgz) what=ext_mods;; *salt_state.tgz) what=state_tar;;
  /bin/sh*) what=command;; esac; done
echo "$t0 $t1 {tool} $what" >> {log}
exit $rc
"""


def traced_salt_ssh(*args):
    """salt-ssh with its ssh and scp calls timed: (wall, calls [(tool, what, seconds)])."""
    bindir = paths.HOME / "bench-sshlog"
    bindir.mkdir(exist_ok=True)
    log = bindir / "calls.log"
    log.unlink(missing_ok=True)
    for tool in ("ssh", "scp"):
        (bindir / tool).write_text(SSH_LOGGER.format(tool=tool, log=log))
        (bindir / tool).chmod(0o755)
    env = dict(salt_env(), PATH=f"{bindir}:{salt_env()['PATH']}")
    wall, _, proc = timed(saltcfg.salt_ssh_argv(*args), env=env)
    if proc.returncode != 0:
        sys.exit(f"traced run failed:\n{proc.stdout[-2000:]}")
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        t0, t1, tool, what = line.split()
        calls.append((tool, what, float(t1) - float(t0)))
    return wall, calls


def anatomy(ips, results, tag):
    """What one no-op run sends over SSH per node, with and without connection reuse, and
    what the thin costs when it is not on the node yet (cold) against reusing it."""
    out = {}
    for on in (False, True):
        set_mux(on)
        traced_salt_ssh("*", "state.apply", "kvmcluster")  # the masters exist (when on)
        _, calls = traced_salt_ssh("*", "state.apply", "kvmcluster")
        per = {}
        for tool, what, secs in calls:
            if what == "other":
                continue  # ssh -V and the like, once per run
            row = per.setdefault(f"{tool} {what}", {"calls_per_node": 0, "seconds": []})
            row["seconds"].append(secs)
        for row in per.values():
            row["calls_per_node"] = round(len(row["seconds"]) / len(ips), 1)
            row["median_s"] = round(statistics.median(row.pop("seconds")), 3)
        out["mux" if on else "no_mux"] = per
    set_mux(True)
    warm = []
    cold = []
    for _ in range(2):
        wall, _ = traced_salt_ssh("*", "state.apply", "kvmcluster")
        warm.append(wall)
        for ip in ips:
            node_ssh(ip, "rm -rf /var/tmp/.root_*_salt")
        wall, calls = traced_salt_ssh("*", "state.apply", "kvmcluster")
        cold.append(wall)
        out["cold_thin_sends_per_node"] = round(
            sum(1 for _, what, _ in calls if what == "thin") / len(ips), 1)
    out["warm_noop"] = stats(warm)
    out["cold_thin_noop"] = stats(cold)
    results[f"ssh_anatomy_{tag}"] = out


def raw_install(nodes, results):
    """The raw floor: the same packages by a bare apt-get on fresh nodes, in parallel."""
    ips = fresh_lab(nodes)
    pkgs = " ".join(kvm_packages())
    t0, c0 = time.monotonic(), ctl_cpu()
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
         "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "LogLevel=ERROR", f"root@{ip}",
         f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
         f"--no-install-recommends {pkgs} >/dev/null"]) for ip in ips]
    codes = [p.wait(timeout=3600) for p in procs]
    if any(codes):
        sys.exit(f"apt-get install failed: {codes}")
    results["raw_apt_install"] = {"seconds": round(time.monotonic() - t0, 1),
                                  "ctl_cpu_s": round(ctl_cpu() - c0, 1), "nodes": nodes,
                                  "packages_after": package_count(ips[0])}


def kvm_packages():
    import yaml  # pylint: disable=import-outside-toplevel

    deb = yaml.safe_load((paths.REPO_ROOT / "kvmcluster/parameters/os_family/Debian.yaml")
                         .read_text())["values"]["pkgs"]
    return deb["kvm"] + deb["network"]["ifupdown"] + deb["account"]


def ansible(nodes, runs, results):
    """The same work as a plain playbook (packages, libvirtd.conf, sysctl, storage path)."""
    py = ANSIBLE_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", ANSIBLE_PIN], check=True)
    ips = fresh_lab(nodes)
    inv = paths.HOME / "bench-inventory.ini"
    inv.write_text("[kvm]\n" + "\n".join(
        f"{ip} ansible_user=root ansible_ssh_private_key_file={paths.SSH_KEY} "
        "ansible_python_interpreter=/usr/bin/python3" for ip in ips) + "\n")
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_FORKS=str(nodes),
               ANSIBLE_SSH_ARGS="-o UserKnownHostsFile=/dev/null -o ControlMaster=auto "
                                "-o ControlPersist=60s",
               PATH=f"{ANSIBLE_VENV / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin")
    argv = ["ip", "netns", "exec", net.CONTROLLER, str(ANSIBLE_VENV / "bin/ansible-playbook"),
            "-i", str(inv), str(HERE / "ansible/kvm.yml"),
            "-e", json.dumps({"kvm_packages": kvm_packages()})]
    before = package_count(ips[0])
    wall, cpu, proc = timed(argv, env=env)
    if proc.returncode != 0:
        sys.exit(f"ansible first run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    results["ansible_first"] = {"seconds": round(wall, 1), "ctl_cpu_s": round(cpu, 1),
                                "nodes": nodes, "packages_before": before,
                                "packages_after": package_count(ips[0])}
    walls, cpus, node_cpus = [], [], []
    for _ in range(runs):
        wall, cpu, proc = timed(argv, env=env)
        changed = [int(x) for x in re.findall(r"changed=(\d+)", proc.stdout)]
        if proc.returncode != 0 or len(changed) != nodes or any(changed):
            sys.exit(f"ansible no-op failed or changed:\n{proc.stdout[-3000:]}")
        walls.append(wall)
        cpus.append(cpu)
        node_cpus.append(LAST_NODE_CPU["seconds"])
    results["ansible_noop"] = stats(walls)
    results["ansible_noop_node_cpu_per_node"] = round(statistics.median(node_cpus) / nodes, 2)
    results["ansible_noop_ctl_cpu_per_node"] = round(statistics.median(cpus) / nodes, 2)


def tree_cpu(pid):
    """CPU seconds of a process and its living descendants (the salt-master's workers)."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="utf-8") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(d)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, (ppid, _) in procs.items() if ppid == p and c not in tree]
    return sum(procs[p][1] for p in tree if p in procs) / os.sysconf("SC_CLK_TCK")


def master_mode(nodes, runs, results):
    """The same rows through a salt-master and minions: the management side's CPU is the
    salt CLI's plus the master's (its process and workers)."""
    control.down()
    control.up(containers=nodes, with_master=True)
    (master.STATES_DIR / "benchnoop.sls").write_text(NOOP_SLS)
    mpid = control.load_state()["children"]["salt-master"]["pid"]

    def run(*args):
        m0 = tree_cpu(mpid)
        wall, cpu, proc = timed(master.salt_argv(*args, "--timeout=1800"))
        return wall, cpu + tree_cpu(mpid) - m0, proc

    wall, cpu, proc = run("*", "state.apply", "kvmcluster", "--out=json", "--static")
    pending = [n for n, r in report.parse_json(proc.stdout).items() if report.took_over(r)]
    if proc.returncode != 0 and not pending:
        sys.exit(f"master first apply failed:\n{proc.stdout[-3000:]}")
    if pending:
        report.confirm(pending, salt=lambda *a: master.salt(*a, "--timeout=120"))
    results[f"master_first_apply_{nodes}"] = {"seconds": round(wall, 1),
                                              "ctl_cpu_s": round(cpu, 1), "nodes": nodes}
    series, noop = noop_rows(run, runs, "salt-master")
    for _, _, stdout in noop:
        changed = [report.summarize(r)["changed"] for r in report.parse_json(stdout).values()]
        if len(changed) != nodes or any(changed):
            sys.exit(f"master no-op changed something: {changed}")
    for name, values in series.items():
        results[f"master_{name}_{nodes}"] = stats(values)
    results[f"master_noop_node_cpu_per_node_{nodes}"] = round(
        statistics.median(n for _, n, _ in noop) / nodes, 2)
    results[f"master_noop_ctl_cpu_per_node_{nodes}"] = round(
        statistics.median(c for c, _, _ in noop) / nodes, 2)


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def table(r):
    med = {k: v["median"] for k, v in r.items() if isinstance(v, dict) and "median" in v}
    rows = [("row", "what", "seconds (min/median/max or once)", "")]

    def line(tag, what, key):
        v = r.get(key)
        if isinstance(v, dict) and "median" in v:
            rows.append((tag, what, f"{v['min']}/{v['median']}/{v['max']} (n={v['n']})", ""))
        elif isinstance(v, dict):
            pkgs = (f"; packages {v.get('packages_before', '?')} -> {v['packages_after']}"
                    if "packages_after" in v else "")
            rows.append((tag, what, f"{v['seconds']}", f"ctl CPU {v['ctl_cpu_s']} s{pkgs}"))
    line("a", "salt-ssh test.ping, 3 nodes", "ping_3")
    line("a", "salt-ssh state.apply one no-op state, 3 nodes", "floor_sls_3")
    line("b", "salt-ssh state.apply kvmcluster, converged, 3 nodes", "kvmcluster_noop_3")
    line("b'", "  the same, SSH connections not reused (alternating)", "kvmcluster_noop_no_mux_3")
    line("b'", "  the same, SSH ControlMaster/ControlPersist (alternating)", "kvmcluster_noop_mux_3")
    line("c", "first converge, 3 fresh nodes", "first_apply_3")
    line("c", "bare apt-get install of the same packages, 3 fresh nodes", "raw_apt_install")
    line("e", "ansible-playbook (same work), first run, 3 fresh nodes", "ansible_first")
    line("e", "ansible-playbook, no-op", "ansible_noop")
    line("d", "salt-ssh state.apply one no-op state, 12 nodes", "floor_sls_12")
    line("d", "salt-ssh state.apply kvmcluster, converged, 12 nodes", "kvmcluster_noop_12")
    line("d", "first converge, 12 fresh nodes", "first_apply_12")
    line("f", "salt-master: salt test.ping, 3 nodes", "master_ping_3")
    line("f", "salt-master: state.apply one no-op state, 3 nodes", "master_floor_sls_3")
    line("f", "salt-master: state.apply kvmcluster, converged, 3 nodes",
         "master_kvmcluster_noop_3")
    line("f", "salt-master: first converge, 3 fresh nodes", "master_first_apply_3")
    out = ["  ".join(f"{c:<{w}}" for c, w in zip(row, (4, 58, 34, 0))).rstrip() for row in rows]
    first3 = (r.get("first_apply_3") or {}).get("seconds")
    checks = {
        "(b)/(a) no-op vs one-state floor, 3 nodes [goal <= 1.2]":
            ratio(med.get("kvmcluster_noop_3"), med.get("floor_sls_3")),
        "(b)/Ansible no-op, 3 nodes [goal <= 1]":
            ratio(med.get("kvmcluster_noop_3"), med.get("ansible_noop")),
        "(c)/Ansible first run, 3 nodes [goal <= 0.5]":
            ratio(first3, (r.get("ansible_first") or {}).get("seconds")),
        "(c)/bare apt-get, 3 nodes":
            ratio(first3, (r.get("raw_apt_install") or {}).get("seconds")),
        "(b) 12 nodes / 3 nodes [goal <= 2]":
            ratio(med.get("kvmcluster_noop_12"), med.get("kvmcluster_noop_3")),
        "controller CPU s per node per no-op run, 3 nodes [goal <= 0.5]":
            r.get("kvmcluster_noop_ctl_cpu_per_node_3"),
        "controller CPU s per node per no-op run, 12 nodes [goal <= 0.5]":
            r.get("kvmcluster_noop_ctl_cpu_per_node_12"),
        "salt-master (f): no-op / Ansible no-op, 3 nodes [goal <= 1]":
            ratio(med.get("master_kvmcluster_noop_3"), med.get("ansible_noop")),
        "salt-master (f): no-op / one-state floor, 3 nodes [goal <= 1.2]":
            ratio(med.get("master_kvmcluster_noop_3"), med.get("master_floor_sls_3")),
        "salt-master (f): management CPU s per node per no-op run [goal <= 0.5]":
            r.get("master_noop_ctl_cpu_per_node_3"),
        "node-side CPU s per node per no-op run, 3 nodes (same CPUs here)":
            r.get("kvmcluster_noop_node_cpu_per_node_3"),
        "node-side CPU s per node per no-op run, 12 nodes":
            r.get("kvmcluster_noop_node_cpu_per_node_12"),
        "Ansible node-side CPU s per node per no-op run":
            r.get("ansible_noop_node_cpu_per_node"),
        "salt-master (f): node-side CPU s per node per no-op run":
            r.get("master_noop_node_cpu_per_node_3"),
        "Ansible controller CPU s per node per no-op run":
            r.get("ansible_noop_ctl_cpu_per_node"),
    }
    r["ratios"] = checks
    out.append("")
    out += [f"{k}: {v}" for k, v in checks.items()]
    anat = r.get("ssh_anatomy_3") or {}
    for key, label in (("no_mux", "without reuse"), ("mux", "with ControlMaster")):
        if anat.get(key):
            out.append(f"SSH per node per no-op run, {label}: " + "; ".join(
                f"{k} x{v['calls_per_node']} ({v['median_s']} s each)"
                for k, v in sorted(anat[key].items())))
    if anat.get("warm_noop"):
        out.append(f"thin kept on the nodes: no-op {anat['warm_noop']['median']} s; thin removed "
                   f"first (shipped again, {anat.get('cold_thin_sends_per_node')} per node): "
                   f"{anat['cold_thin_noop']['median']} s (medians of {anat['warm_noop']['n']})")
    slow = r.get("slowest_noop_states_3") or []
    if slow:
        out.append("slowest states of a no-op run (ms, node, state): "
                   + "; ".join(f"{ms} {n} {s}" for ms, n, s in slow[:6]))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="repetitions of each no-op row")
    ap.add_argument("--big", type=int, default=12, help="nodes of the large lab (0: skip)")
    ap.add_argument("--no-ansible", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--only", default="small,raw,ansible,master,big",
                    help="phases to run (the others keep their results from --out)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() and a.only != ap.get_default(
        "only") else {}
    results.update({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": f"{platform.node()}: {os.cpu_count()} CPUs, "
                               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30}"
                               f" GiB, {platform.platform()}"})
    phases = {"small": lambda: converge_and_noop(3, a.runs, results, "3"),
              "raw": lambda: raw_install(3, results),
              "ansible": lambda: None if a.no_ansible else ansible(3, a.runs, results),
              "master": lambda: master_mode(3, a.runs, results),
              "big": lambda: a.big and converge_and_noop(a.big, max(3, a.runs // 2), results,
                                                         str(a.big))}
    try:
        for name in a.only.split(","):
            phases[name]()
            out.write_text(json.dumps(results, indent=1) + "\n")  # kept phase by phase
    finally:
        control.down()
    text = table(results)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"== kvmcluster benchmark, {results['date']}, {results['machine']}")
    print(text)
    print(f"(JSON: {a.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
