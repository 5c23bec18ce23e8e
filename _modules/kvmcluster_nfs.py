"""
Shared secondary storage of a kvmcluster: the NFS export on the server node, the mount on
every node, and a bounded wait for the export (argv lists, no shell; every wait has an end).
"""
import os
import socket
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_nfs"

ETAB = "/var/lib/nfs/etab"
NFS_PORT = 2049
SSH_PORT = 22


def __virtual__():
    return __virtualname__


def exports_text(path, clients, options):
    """
    The formula's exports file: one line exporting ``path`` to each client with ``options``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_nfs.exports_text /data01/secondary '[172.30.10.41]' '[rw, sync]'
    """
    __utils__["kvmcluster_safe.check"]("/etc/exports.d", "exports",
                                       {"path": path, "clients": list(clients),
                                        "options": list(options)})
    opts = ",".join(options)
    targets = " ".join(f"{c}({opts})" for c in clients)
    return ("# Managed by kvmcluster (pillar kvmcluster:storage:secondary).\n"
            f'"{path}" {targets}\n')


def exported(path, etab=ETAB):
    """
    The clients the kernel's export table (etab, as written by exportfs) has for ``path``,
    with their effective options.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_nfs.exported /data01/secondary
    """
    out = {}
    try:
        with open(etab, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2 and parts[0] == path and "(" in parts[1]:
                    client, opts = parts[1].split("(", 1)
                    out[client] = opts.rstrip(")").split(",")
    except FileNotFoundError:
        pass
    return out


def reexport():
    """
    Re-read /etc/exports and /etc/exports.d (``exportfs -ra``): new clients see the change,
    mounted clients keep their mounts; no service restart.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_nfs.reexport
    """
    res = __salt__["cmd.run_all"](["exportfs", "-ra"], python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        raise CommandExecutionError(f"exportfs -ra failed: {res['stderr'] or res['stdout']}")
    return True


def mount_of(mountpoint, mountinfo="/proc/self/mountinfo"):
    """
    What is mounted at ``mountpoint``: ``{"source", "fstype", "options"}`` or None. Reads
    the mount table only, so it never blocks on a dead NFS server.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_nfs.mount_of /mnt/secondary
    """
    found = None
    with open(mountinfo, encoding="utf-8") as fh:
        for line in fh:
            left, right = line.split(" - ", 1)
            fields = left.split()
            if fields[4].replace("\\040", " ") == mountpoint:
                fstype, source, sopts = right.split()[:3]
                # Later lines are mounted over earlier ones: the last is what is visible.
                found = {"source": source, "fstype": fstype,
                         "options": fields[5].split(",") + sopts.split(","),
                         "root": fields[3]}
    return found


def tcp_open(host, port, timeout=2.0):
    """
    Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_nfs.tcp_open 172.30.10.41 2049
    """
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def mount(source, mountpoint, fstype="nfs", options=(), timeout=30):
    """
    Mount ``source`` at ``mountpoint``, giving up after ``timeout`` seconds (a hard NFS
    mount of an absent server would otherwise wait for it forever).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_nfs.mount 172.30.10.41:/data01/secondary /mnt/secondary
    """
    os.makedirs(mountpoint, exist_ok=True)
    argv = ["timeout", "--kill-after=5", str(int(timeout)), "mount", "-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    argv += [source, mountpoint]
    res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        why = "timed out" if res["retcode"] in (124, 137) else (res["stderr"] or res["stdout"]).strip()
        raise CommandExecutionError(f"mount {source} on {mountpoint} failed: {why}")
    return True


def wait_and_mount(server_name, server_ip, export_path, mountpoint, options, wait_timeout,
                   unreachable_after=30):
    """
    Mount the server's export, waiting for it while the server is up but not exporting yet
    (e.g. installing its packages in the same run) for at most ``wait_timeout`` seconds;
    when the server answers on neither NFS nor SSH for ``unreachable_after`` seconds, fail
    at once, naming it. Returns the seconds waited.

    CLI Example:

    .. code-block:: bash

        salt kvm02 kvmcluster_nfs.wait_and_mount kvm01 172.30.10.41 /data01/secondary \
            /mnt/secondary '[vers=4.2, hard]' 120
    """
    t0 = time.monotonic()
    deadline = t0 + float(wait_timeout)
    last_seen = t0
    last_err = "the export did not appear"
    # Each round is bounded: two 2 s probes, a mount of at most 15 s, a 3 s pause.
    while True:
        now = time.monotonic()
        if tcp_open(server_ip, NFS_PORT):
            last_seen = now
            try:
                mount(f"{server_ip}:{export_path}", mountpoint, "nfs",
                      [*options, "retry=0"], timeout=15)
                return round(time.monotonic() - t0, 1)
            except CommandExecutionError as exc:
                last_err = str(exc)
        elif tcp_open(server_ip, SSH_PORT):
            last_seen = now
            last_err = f"NFS (port {NFS_PORT}) is not served yet"
        elif now - last_seen >= unreachable_after:
            raise CommandExecutionError(
                f"NFS server {server_name} ({server_ip}) is unreachable: no answer on port "
                f"{NFS_PORT} or {SSH_PORT} for {now - last_seen:.0f}s; "
                f"{mountpoint} not mounted")
        if time.monotonic() >= deadline:
            raise CommandExecutionError(
                f"NFS export {server_name}:{export_path} not mountable after "
                f"{wait_timeout}s (storage:secondary:wait_timeout): {last_err}")
        time.sleep(3)
