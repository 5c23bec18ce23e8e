"""lab CLI: up | down | status | ssh NODE [--] [CMD...] | apply [SALT ARGS...] | salt [SALT ARGS...]

``--from-env`` reads the arguments from the environment variable ARGS, split like a shell
would split words but with no command separators: ``make lab ARGS='ssh kvm02 -- a; b'`` runs
``a; b`` on kvm02, never ``b`` on the host."""
import argparse
import json
import os
import shlex
import subprocess
import sys

from . import control, master, net, netprep, paths, report, saltcfg, spec


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--from-env"]:
        argv = shlex.split(os.environ.get("ARGS", ""))
    ap = argparse.ArgumentParser(prog="lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="build the image once, start the nodes")
    p_up.add_argument("--nodes", type=int, default=3, help="container nodes (default 3)")
    p_up.add_argument("--vms", type=int, default=0, help="VM nodes (own kernel) after them")
    p_up.add_argument("--management", type=int, default=0,
                      help="management nodes (dnsmasq DNS/DHCP), mgmt01 at .12 on")
    p_up.add_argument("--backends", default="",
                      help="per node, in order: ifupdown, networkmanager or netplan "
                           "(comma-separated; default ifupdown)")
    p_up.add_argument("--master", action="store_true",
                      help="also a salt-master on the management namespace, minions on nodes")
    sub.add_parser("down", help="stop everything, remove namespaces, mounts and disks")
    sub.add_parser("status", help="what runs, as JSON")
    p_ssh = sub.add_parser("ssh", help="a shell or command on a node")
    p_ssh.add_argument("node")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    p_apply = sub.add_parser("apply", help="salt-ssh '*' state.apply kvmcluster")
    p_apply.add_argument("args", nargs=argparse.REMAINDER)
    p_master = sub.add_parser("master", help="salt (master mode) with the lab master's config")
    p_master.add_argument("args", nargs=argparse.REMAINDER)
    p_salt = sub.add_parser("salt", help="salt-ssh with the lab's Saltfile")
    p_salt.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("info", help="each node's own view (kvmcluster_node.info) as JSON")
    sub.add_parser("validate", help="validate the lab's pillar on the management node only")
    sub.add_parser("demo", help="up, apply, summary per node, how to reach the nodes")
    sub.add_parser("_supervise")
    a, extra = ap.parse_known_args(argv)
    if extra and a.cmd not in ("apply", "salt", "master"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.cmd in ("apply", "salt", "master"):
        a.args = [*(a.args or []), *extra]

    if a.cmd == "up":
        backends = [b for b in a.backends.split(",") if b]
        bad = [b for b in backends if b not in netprep.BACKENDS]
        if bad:
            ap.error(f"unknown backend(s) {', '.join(bad)}; valid: {', '.join(netprep.BACKENDS)}")
        control.up(a.nodes, a.vms, with_master=a.master, backends=backends,
                   management=a.management)
    elif a.cmd == "down":
        control.down()
    elif a.cmd == "status":
        print(json.dumps(control.status(), indent=1))
    elif a.cmd == "info":
        print(json.dumps(report.info(), indent=1, sort_keys=True))
    elif a.cmd == "validate":
        os.environ["PATH"] = f"{saltcfg.VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
        for step in (["saltutil.sync_modules"], ["kvmcluster_model.validate", "--retcode-passthrough"]):
            res = subprocess.run(saltcfg.salt_call_argv(*step), check=False)
        sys.exit(res.returncode)
    elif a.cmd == "demo":
        sys.exit(report.demo())
    elif a.cmd == "_supervise":
        control.supervise()
    elif a.cmd == "ssh":
        st = control.load_state()
        ips = {n.name: n.ip for n in spec.from_dicts(st.get("spec", []))}
        if a.node not in ips:
            sys.exit(f"no node {a.node!r}; nodes: {', '.join(ips) or 'none (lab down)'}")
        command = a.command[1:] if a.command[:1] == ["--"] else a.command
        # One string: the node's shell runs all of it (``a; b`` included), never the host's.
        argv = ["ip", "netns", "exec", net.CONTROLLER, "ssh", "-i", str(paths.SSH_KEY),
                "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", "LogLevel=ERROR", f"root@{ips[a.node]}",
                *([" ".join(command)] if command else [])]
        os.execvp(argv[0], argv)
    elif a.cmd == "master":
        argv = master.salt_argv(*a.args)
        os.execvp(argv[0], argv)
    elif a.cmd in ("apply", "salt"):
        args = a.args or []
        if a.cmd == "apply":
            args = ["*", "state.apply", "kvmcluster", *args]
        argv = saltcfg.salt_ssh_argv(*args)
        os.environ["PATH"] = f"{saltcfg.VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
        os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
