"""
Cluster-wide actions of kvmcluster, run on the management node (``salt-run``).

``confirm`` reaches every node at the address the cluster model gives it (after a
re-addressing, the new one) over new connections and confirms its pending network change:
with a salt-master through the minions, with salt-ssh through the roster (each node's host
replaced by its model address). Use it with ``saltutil.sync_runners`` on a master, or with
``runner_dirs`` pointing at this directory.
"""
import contextvars
import logging
import os
import sys
import tempfile
import threading
import time

import salt.client
import salt.pillar
import salt.roster
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltClientError

log = logging.getLogger(__name__)

__virtualname__ = "kvmcluster"
ROOT = "kvmcluster"
CONFIRM_FUN = "kvmcluster_network.confirm"


def __virtual__():
    return __virtualname__


def _model_address(node):
    """The node's IPv4 address in its own pillar (the model's ``nodes:<id>:ip``)."""
    pillar = salt.pillar.get_pillar(__opts__, {"id": node}, node,
                                    saltenv=__opts__.get("saltenv") or "base").compile_pillar()
    entry = ((pillar.get(ROOT) or {}).get("nodes") or {}).get(node) or {}
    ip = str(entry.get("ip") or "").split("/", maxsplit=1)[0]
    if not ip:
        raise CommandExecutionError(f"[{node}] {ROOT}:nodes:{node}:ip is not in its pillar")
    return ip


def _ssh_targets(tgt, tgt_type):
    roster = salt.roster.Roster(__opts__, __opts__.get("roster", "flat"))
    try:
        return roster.targets(tgt, tgt_type)
    finally:
        roster.destroy()


def _ssh_confirm(nodes, tgt_targets):
    """One salt-ssh round of ``confirm`` to ``nodes`` at their model addresses."""
    from salt.client.ssh.client import SSHClient  # pylint: disable=import-outside-toplevel

    roster = {}
    for node in nodes:
        entry = dict(tgt_targets[node])
        entry["host"] = _model_address(node)
        roster[node] = entry
    fd, path = tempfile.mkstemp(prefix="kvmcluster-roster-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            salt.utils.yaml.safe_dump(roster, fh, default_flow_style=False)
        client = SSHClient(mopts=dict(__opts__))
        return client.cmd(sorted(nodes), CONFIRM_FUN, tgt_type="list", roster_file=path) or {}
    finally:
        os.unlink(path)


def _result(raw):
    """A node's confirm answer out of the client's wrapping (``{"return": ...}`` or bare)."""
    if isinstance(raw, dict) and "return" in raw and "confirmed" not in raw:
        raw = raw["return"]
    return raw if isinstance(raw, dict) else {"confirmed": False, "comment": str(raw)[:300]}


def confirm(tgt="*", tgt_type="glob", ssh=False, wait=120, interval=5):
    """
    Confirm the pending network change of the targeted nodes from new connections, retrying
    for up to ``wait`` seconds while a node is not (yet) reachable at its model address.
    Returns ``{node: confirm result}``; the run fails when a node stays unconfirmed.

    tgt, tgt_type
        The nodes (default: every node).
    ssh
        Reach the nodes with salt-ssh and the master's roster instead of the minions.
    wait
        Seconds to keep trying (bounded; a re-addressed node needs a few seconds).

    CLI Example:

    .. code-block:: bash

        salt-run kvmcluster.confirm
        salt-run kvmcluster.confirm tgt=kvm02 ssh=True
    """
    deadline = time.monotonic() + int(wait)
    done = {}
    if ssh:
        targets = _ssh_targets(tgt, tgt_type)
        left = set(targets)
    else:
        local = salt.client.get_local_client(__opts__["conf_file"])
        left = None
    for _ in range(max(1, int(wait) // max(1, int(interval)) + 1)):
        try:
            if ssh:
                got = _ssh_confirm(left, targets) if left else {}
            else:
                got = local.cmd(tgt, CONFIRM_FUN, tgt_type=tgt_type, timeout=30)
                if left is None:
                    left = set(got)
                got = {n: r for n, r in got.items() if n in left}
        except (SaltClientError, CommandExecutionError) as exc:
            log.warning("kvmcluster.confirm: %s", exc)
            got = {}
        for node, raw in got.items():
            res = _result(raw)
            if res.get("confirmed") or res.get("phase") == "rolled-back":
                done[node] = res
                left.discard(node)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(int(interval))
    for node in sorted(left or ()):
        done[node] = {"confirmed": False, "comment": f"not reachable at its model address "
                                                     f"within {wait}s"}
    if not all(r.get("confirmed") for r in done.values()):
        __context__["retcode"] = 1
    return done


# ---- calls to the nodes ---------------------------------------------------------------

def _unwrap(raw):
    """A node's answer out of the client's wrapping: ``(value, None)`` or ``(None, why)``."""
    if isinstance(raw, dict) and "return" in raw:
        if raw.get("retcode") not in (None, 0) and not isinstance(raw["return"], dict):
            return None, str(raw["return"])[:400]
        return raw["return"], None
    if isinstance(raw, dict) and ("stderr" in raw or "retcode" in raw) and "node" not in raw:
        why = (raw.get("stderr") or raw.get("stdout") or f"retcode {raw.get('retcode')}")
        return None, " ".join(str(why).split())[:400]
    if isinstance(raw, str):
        return None, raw[:400]
    return raw, None


class NoTarget(CommandExecutionError):
    """The target matches no node: an answer from nobody is not "the nodes agree"."""


def _none_matched(tgt, tgt_type, ssh):
    where = "the roster" if ssh else "the master's accepted minions"
    return NoTarget(f"target {tgt!r} ({tgt_type}) matches no node of {where}; nothing was "
                    "asked")


def _targets(tgt, tgt_type, ssh):
    """The node ids ``tgt`` matches (the roster's or the master's accepted minions)."""
    if ssh:
        found = sorted(_ssh_targets(tgt, tgt_type))
    else:
        import salt.utils.minions  # pylint: disable=import-outside-toplevel

        found = sorted(salt.utils.minions.CkMinions(__opts__).check_minions(
            tgt, tgt_type)["minions"])
    if not found:
        raise _none_matched(tgt, tgt_type, ssh)
    return found


def _call(fun, tgt="*", tgt_type="glob", ssh=False, timeout=60, arg=(), kwarg=None):
    """``fun`` on the targeted nodes: ``({node: return}, {node: why it did not answer})``.
    Bounded: salt-ssh's connection timeout, the master's job timeout."""
    answered, missing = {}, {}
    if ssh:
        from salt.client.ssh.client import SSHClient  # pylint: disable=import-outside-toplevel

        expected = sorted(_ssh_targets(tgt, tgt_type))
        if not expected:
            raise _none_matched(tgt, tgt_type, ssh)
        # salt-ssh connects with ConnectTimeout = ssh_timeout + timeout (60 s more by
        # default): here the connection gets the bound, at most 30 s, nothing added.
        client = SSHClient(mopts=dict(__opts__, ssh_timeout=min(int(timeout), 30), timeout=0))
        got = client.cmd(expected, fun, arg=list(arg), tgt_type="list", kwarg=kwarg) or {}
    else:
        import salt.utils.minions  # pylint: disable=import-outside-toplevel

        expected = sorted(salt.utils.minions.CkMinions(__opts__).check_minions(
            tgt, tgt_type)["minions"])
        if not expected:
            raise _none_matched(tgt, tgt_type, ssh)
        local = salt.client.get_local_client(__opts__["conf_file"])
        got = local.cmd(tgt, fun, arg=list(arg), tgt_type=tgt_type, timeout=timeout,
                        kwarg=kwarg) or {}
    for node in expected:
        if node not in got:
            missing[node] = f"no answer within {timeout}s"
            continue
        value, why = _unwrap(got[node])
        if why is not None:
            missing[node] = why
        else:
            answered[node] = value
    return answered, missing


def _parameters():
    """The formula's defaults (``parameters/defaults.yaml`` from the master's file_roots),
    for the nodes' modules: a plain salt-ssh call has no fileserver to read them from."""
    import salt.fileclient  # pylint: disable=import-outside-toplevel

    client = salt.fileclient.get_file_client(dict(__opts__, file_client="local"))
    try:
        path = client.cache_file(f"salt://{ROOT}/parameters/defaults.yaml",
                                 __opts__.get("saltenv") or "base")
    finally:
        client.destroy()
    if not path:
        raise CommandExecutionError(f"salt://{ROOT}/parameters/defaults.yaml is not in the "
                                    "master's file_roots: put the formula there")
    with open(path, encoding="utf-8") as fh:
        return salt.utils.yaml.safe_load(fh)["values"]


def _node_pillar(node):
    return salt.pillar.get_pillar(__opts__, {"id": node}, node,
                                  saltenv=__opts__.get("saltenv") or "base").compile_pillar()


def _call_model(fun, tgt="*", tgt_type="glob", ssh=False, timeout=60, arg=(), kwarg=None):
    """``_call`` of a function that needs the model: the formula's defaults go along, and
    with salt-ssh each node's ``kvmcluster`` pillar as compiled here (a plain salt-ssh call
    carries no pillar). Nodes with the same pillar share one call."""
    import json  # pylint: disable=import-outside-toplevel

    kwarg = dict(kwarg or {}, parameters=json.dumps(_parameters()))
    if not ssh:
        return _call(fun, tgt, tgt_type, ssh, timeout, arg, kwarg)
    groups = {}
    withhold = _util("kvmcluster_safe.withhold")
    targets = sorted(_ssh_targets(tgt, tgt_type))
    if not targets:
        raise _none_matched(tgt, tgt_type, ssh)
    for node in targets:
        # The node gets its model, never a secret: the call's arguments are in its process
        # list while it runs, in this master's job cache and in debug logs.
        cluster = json.dumps(withhold(_node_pillar(node).get(ROOT) or {}), sort_keys=True,
                             default=str)
        groups.setdefault(cluster, []).append(node)
    answered, missing = {}, {}
    for cluster, nodes in groups.items():
        got, lost = _call(fun, nodes, "list", ssh, timeout, arg, dict(kwarg, cluster=cluster))
        answered.update(got)
        missing.update(lost)
    return answered, missing


def _util(name):
    """A function of the formula's ``_utils``, or the reason it is missing: the runner and
    its helpers are synced apart (a KeyError would tell the operator nothing)."""
    try:
        return __utils__[name]
    except KeyError:
        raise CommandExecutionError(
            f"the kvmcluster runner's helpers are not loaded ({name}): run `salt-run "
            "saltutil.sync_all` (or sync_runners and sync_utils) on the master, or point "
            "runner_dirs and utils_dirs at the formula's _runners and _utils") from None


def _cluster():
    return _util("kvmcluster_cluster.findings"), _util("kvmcluster_cluster.table")


def status(tgt="*", tgt_type="glob", ssh=False, timeout=60, table=True, columns="default"):
    """
    The cluster at a glance: one report per node (``kvmcluster_report.node``: the bridge
    and its port, MTU, libvirtd, pools, the share, VMs, CPU, versions, a pending network
    change, the clock) and the findings across them (paths or MTUs that differ, a share
    missing or read-only, CPUs that cannot run each other's guests, version skew, a VM on
    the wrong node or on two). Unreachable nodes are shown as such after ``timeout``
    seconds. The run fails (exit code 1) when a finding is an error.

    tgt, tgt_type
        The nodes (default: every node).
    ssh
        Reach the nodes with salt-ssh and the roster instead of the minions.
    table
        Print the table (``--out=json`` gets the data either way).
    columns
        ``default``: the columns that fit 120 characters (CPU, versions and clocks that
        disagree are findings below it); ``all``: every column.

    CLI Example:

    .. code-block:: bash

        salt-run kvmcluster.status
        salt-run kvmcluster.status columns=all
        salt-run kvmcluster.status ssh=True --out=json
    """
    try:
        findings, render = _cluster()
        sent = time.time()
        answered, missing = _call_model("kvmcluster_report.node", tgt, tgt_type, ssh,
                                        int(timeout))
    except CommandExecutionError as exc:
        # Said plainly, exit code 1 (not a traceback, not "the nodes agree").
        if __opts__.get("output") in (None, "nested", "txt", "highstate"):
            print(f"kvmcluster.status: {exc}")
        return _failed({"error": str(exc)})
    window = (sent, time.time())
    reports = dict(answered)
    reports.update({n: {"node": n, "unreachable": why} for n, why in missing.items()})
    found = findings(reports, window)
    # salt-run exits with a returned "retcode"; orchestration reads the context's.
    retcode = int(any(f["level"] == "error" for f in found))
    __context__["retcode"] = retcode
    if table and __opts__.get("output") in (None, "nested", "txt", "highstate"):
        print(render(reports, found, window, wide=columns == "all"))
        return {"errors": sum(f["level"] == "error" for f in found),
                "warnings": sum(f["level"] == "warning" for f in found), "retcode": retcode}
    return {"nodes": reports, "findings": found, "window": list(window), "retcode": retcode}


def host_keys(tgt="*", tgt_type="glob", ssh=False, timeout=60):
    """
    Every node's SSH host keys as pillar (``kvmcluster:nodes:<id>:ssh_host_keys``), for
    migration over SSH: verify them once (as with any new host key), then paste them into
    the pillar.

    CLI Example:

    .. code-block:: bash

        salt-run kvmcluster.host_keys ssh=True --out=yaml
    """
    answered, missing = _call("cmd.run", tgt, tgt_type, ssh, int(timeout),
                              arg=["cat /etc/ssh/ssh_host_ed25519_key.pub"])
    nodes = {n: {"ssh_host_keys": [" ".join(str(v).split()[:2])]}
             for n, v in sorted(answered.items()) if str(v).startswith("ssh-")}
    if missing:
        return _failed({ROOT: {"nodes": nodes}, "unreachable": missing})
    return {ROOT: {"nodes": nodes}}


# ---- the cluster's migration PKI ---------------------------------------------------------

CA_KEY, CA_CERT = "ca-key.pem", "ca-cert.pem"


def _ca_dir():
    return (__opts__.get("kvmcluster_ca_dir")
            or os.path.join(__opts__.get("pki_dir") or "/etc/salt/pki/master", "kvmcluster-ca"))


def _ca(name):
    """The cluster CA's key and certificate (PEM), kept here (``kvmcluster_ca_dir`` in the
    master config, default ``<pki_dir>/kvmcluster-ca``, root only); made the first time."""
    files = {k: _util(f"kvmcluster_files.{k}") for k in ("open_dir", "read", "create")}
    base = _ca_dir().rstrip("/")
    fd = files["open_dir"](os.path.dirname(base), os.path.basename(base), make=True,
                           mode=0o700)
    try:
        if os.fstat(fd).st_uid != os.geteuid() or os.fstat(fd).st_mode & 0o077:
            raise CommandExecutionError(f"{base} must belong to {os.geteuid()} and be closed to "
                                        "everyone else (mode 0700): it holds the CA's key")
        key, cert = files["read"](fd, CA_KEY), files["read"](fd, CA_CERT)
        if key is None and cert is None:
            key, cert = _util("kvmcluster_pki.new_ca")(name)
            files["create"](fd, CA_KEY, key, 0o600)
            files["create"](fd, CA_CERT, cert, 0o644)
            log.info("kvmcluster: made the cluster's migration CA in %s", base)
        elif key is None or cert is None:
            raise CommandExecutionError(
                f"{base} holds only one of {CA_KEY} and {CA_CERT}: restore the other (or move "
                "both away: a new CA is made, and every node's certificate follows it)")
    finally:
        os.close(fd)
    return key, cert


def _b64(pem):
    import base64  # pylint: disable=import-outside-toplevel

    return base64.b64encode(pem).decode("ascii")


def _certificates(nodes, ssh, timeout, issue=True, renew=False):
    """Each node's migration certificate checked and, with ``issue``, issued or renewed:
    ``({node: what its certificate says, with "action"}, {node: why not}, plaintext)``
    (``plaintext``: the model sends migrations in clear)."""
    answered, missing = _call_model("kvmcluster_pki.request", nodes, "list", ssh, timeout)
    done = {}
    if not answered:
        return done, missing, False
    plaintext = any((a.get("model") or {}).get("plaintext") for a in answered.values()
                    if isinstance(a, dict))
    pki = {k: _util(f"kvmcluster_pki.{k}") for k in ("issue", "fingerprint", "renewal")}
    first = answered[sorted(answered)[0]]
    key, ca = _ca((first.get("model") or {}).get("domain") or "cluster") if issue \
        else (None, _ca_certificate())
    ca_fp = pki["fingerprint"](ca) if ca else None
    for node in sorted(answered):
        ans = answered[node]
        model, have = ans.get("model") or {}, ans.get("certificate")
        if model.get("hypervisor") is False:
            done[node] = {"action": "none: not a hypervisor"}
            continue
        why = "renewal asked" if renew else pki["renewal"](
            have, ca_fp, model.get("dns", []), model.get("ips", []),
            model.get("renew_hours", 0))
        if why is None:
            done[node] = dict(have, action="kept")
            continue
        if not issue:
            done[node] = dict(have or {}, action=f"would issue: {why}")
            continue
        try:
            cert = pki["issue"](key, ca, ans["csr"].encode(), node, model["dns"], model["ips"],
                                model["valid_hours"])
        except (KeyError, ValueError) as exc:
            missing[node] = f"cannot issue its certificate: {exc}"
            continue
        # Keyword arguments: base64 may end in '=', which Salt would read as key=value.
        got, lost = _call("kvmcluster_pki.install", [node], "list", ssh, timeout,
                          kwarg={"cert": _b64(cert), "ca": _b64(ca)})
        new = got.get(node)
        if not isinstance(new, dict) or pki["renewal"](new, ca_fp, model["dns"], model["ips"],
                                                       model["renew_hours"]):
            missing[node] = f"its certificate was not installed: {lost.get(node) or new}"
            continue
        done[node] = dict(new, action=f"issued: {why}")
    return done, missing, plaintext


def _ca_certificate():
    path = os.path.join(_ca_dir(), CA_CERT)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def certificates(tgt="*", tgt_type="glob", ssh=False, timeout=60, renew=False,
                 check_only=False):
    """
    The nodes' migration certificates, from the cluster's CA: each node makes its own key
    (it never leaves the node) and sends a signing request; a certificate that is missing,
    from another CA, for other names or addresses than the model gives the node, or with
    fewer than ``migration:certificates:renew_hours`` left is issued again, valid
    ``valid_hours``. The CA is made on the first run, here (``kvmcluster_ca_dir`` in the
    master config, default ``<pki_dir>/kvmcluster-ca``). ``migrate`` runs the same for its
    two nodes first. The run fails when a node's certificate could not be made good.

    renew
        Issue every targeted node's certificate again, due or not.
    check_only
        Say what would be issued; change nothing.

    CLI Example:

    .. code-block:: bash

        salt-run kvmcluster.certificates
        salt-run kvmcluster.certificates ssh=True check_only=True
        salt-run kvmcluster.certificates tgt=kvm01 renew=True
    """
    try:
        done, missing, _ = _certificates(_targets(tgt, tgt_type, ssh), ssh, int(timeout),
                                         issue=not check_only, renew=renew)
    except CommandExecutionError as exc:
        return _failed({"error": str(exc)})
    out = {"certificates": done, "ca": _ca_dir()}
    if missing:
        out["failed"] = missing
        return _failed(out)
    out["retcode"] = 0
    return out


# ---- migration ------------------------------------------------------------------------

def _where(vm, ssh, timeout):
    """The nodes that run and that have VM ``vm`` defined."""
    answered, missing = _call("kvmcluster_vm.list", "*", "glob", ssh, timeout)
    running = sorted(n for n, vms in answered.items()
                     if isinstance(vms, dict) and (vms.get(vm) or {}).get("state") == "running")
    defined = sorted(n for n, vms in answered.items() if isinstance(vms, dict) and vm in vms)
    return running, defined, missing


def _one(fun, node, ssh, timeout, arg=(), kwarg=None):
    """``fun`` (of a module that needs the model) on one node: its answer, a mapping."""
    answered, missing = _call_model(fun, node, "glob", ssh, timeout, arg=arg, kwarg=kwarg)
    if node not in answered:
        raise CommandExecutionError(f"{node}: {fun}: {missing.get(node, 'no answer')}")
    value = answered[node]
    if not isinstance(value, dict):  # the functions called here answer a mapping
        raise CommandExecutionError(f"{node}: {fun}: {str(value)[:600]}")
    return value


def _failed(out):
    """``out`` marked failed, for salt-run's exit code and for the orchestration."""
    __context__["retcode"] = out["retcode"] = 1
    return out


def _mib(n):
    return f"{(n or 0) / (1 << 20):,.0f} MiB"


def progress_line(vm, source, target, stats, elapsed):
    """One line of a running migration, from ``kvmcluster_migration.progress``."""
    head = f"migrating {vm} {source} -> {target}: {elapsed:.0f}s"
    if not isinstance(stats, dict):
        return f"{head}, no progress from {source}: {stats}"
    if not stats.get("active"):
        where = "starting or finishing" if stats.get("here", True) else f"gone from {source}"
        return f"{head}, no job running on {source} ({where})"
    if not stats.get("data_total"):
        return f"{head}, starting (nothing sent yet)"
    line = (f"{head}, sent {_mib(stats.get('data_processed'))} of "
            f"{_mib(stats.get('data_total'))}, {_mib(stats.get('data_remaining'))} remaining")
    parts = []
    if stats.get("memory_remaining") is not None:
        parts.append(f"memory {_mib(stats['memory_remaining'])}")
    if stats.get("disk_remaining"):
        parts.append(f"disk {_mib(stats['disk_remaining'])}")
    rate = (stats.get("memory_bps") or 0) + (stats.get("disk_bps") or 0)
    if parts:
        line += f" ({', '.join(parts)})"
    if rate:
        line += f", {rate / (1 << 20):,.1f} MiB/s"
    return line


def _say(line):
    """A progress line on the operator's terminal (stderr: the result on stdout stays what
    --out asks for) and in the log."""
    log.info("%s", line)
    print(line, file=sys.stderr, flush=True)


def _with_progress(vm, source, target, ssh, every, work):
    """``work()`` (the migration call, which returns only at its end) while a line of its
    progress is printed every ``every`` seconds (0: none)."""
    if not every or every <= 0:
        return work()
    box = {}
    # The loader's dunders (__opts__, __utils__, ...) live in a context variable: the worker
    # thread runs in a copy of this one's context, or it would see none of them.
    context = contextvars.copy_context()

    def run():
        try:
            box["value"] = context.run(work)
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=run, name=f"migrate-{vm}", daemon=True)
    worker.start()
    while True:
        worker.join(float(every))
        if not worker.is_alive():
            break
        try:
            stats = _one("kvmcluster_migration.progress", source, ssh, 30, arg=[vm])
        except CommandExecutionError as exc:
            stats = str(exc)
        if worker.is_alive():
            _say(progress_line(vm, source, target, stats, time.monotonic() - started))
    if "error" in box:
        raise box["error"]
    return box["value"]


def migrate(vm, target, ssh=False, timeout=1800, check_only=False, progress=10,
            bandwidth=None):
    """
    Move running VM ``vm`` live to node ``target``. First the readiness: the VM runs on
    exactly one node, and the target can take it (capacity, same bridge or network, a CPU
    it can give the guest, the shared disks visible, room for the node-local disks, which
    are copied); anything missing refuses the migration before anything moves. Then
    libvirt migrates it peer-to-peer, live, persistent on the target and undefined on the
    source. Reports libvirt's downtime and the total time.

    vm
        The VM's name.
    target
        The node to move it to.
    ssh
        Reach the nodes with salt-ssh and the roster instead of the minions.
    check_only
        Only the readiness checks.
    progress
        Seconds between progress lines on stderr while the VM moves (data sent and
        remaining, from libvirt's job statistics on the source); 0: none.
    bandwidth
        A cap on the migration's data stream, MiB/s (default: unlimited), so that a move
        leaves the nodes' network to the guests.

    CLI Example:

    .. code-block:: bash

        salt-run kvmcluster.migrate vm=web1 target=kvm02
        salt-run kvmcluster.migrate vm=web1 target=kvm02 ssh=True check_only=True
        salt-run kvmcluster.migrate vm=web1 target=kvm02 bandwidth=200 progress=5
    """
    started = time.monotonic()
    out = {"vm": vm, "target": target, "migrated": False}
    if bandwidth not in (None, 0, "") and (isinstance(bandwidth, bool)
                                           or not str(bandwidth).isdigit()
                                           or not 1 <= int(bandwidth) <= 100000):
        out["refused"] = [f"bandwidth={str(bandwidth)[:40]!r}: give MiB/s, 1-100000"]
        return _failed(out)
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) \
            or not 0 <= progress <= 3600:
        out["refused"] = [f"progress={str(progress)[:40]!r}: give seconds, 0-3600 (0: none)"]
        return _failed(out)
    running, defined, missing = _where(vm, ssh, 60)
    refuse = []
    if target in missing:
        refuse.append(f"target {target} is unreachable: {missing[target]}")
    if not running:
        refuse.append(f"VM {vm} runs on no node that answered"
                      + (f" (defined on {', '.join(defined)})" if defined else "")
                      + (f"; unreachable: {', '.join(sorted(missing))}" if missing else ""))
    elif len(running) > 1:
        refuse.append(f"VM {vm} runs on {', '.join(running)}: resolve that first")
    elif running[0] == target:
        out.update(migrated=False, comment=f"{vm} already runs on {target}")
        return out
    if refuse:
        out["refused"] = refuse
        return _failed(out)
    source = running[0]
    out["source"] = source
    import json  # pylint: disable=import-outside-toplevel

    try:
        plan = _one("kvmcluster_migration.plan", source, ssh, 120, arg=[vm])
        ready = _one("kvmcluster_migration.check", target, ssh, 120, arg=[json.dumps(plan)])
    except CommandExecutionError as exc:
        out["refused"] = [str(exc)]
        return _failed(out)
    out["check"] = ready
    if not ready.get("ok"):
        out["refused"] = ready.get("reasons") or ["the target refused"]
        return _failed(out)
    try:
        # Both QEMUs hold a good certificate of the cluster's CA (issued or renewed now if
        # not), or the stream would not be encrypted: no move.
        certs, bad, plaintext = _certificates([source, target], ssh, 120, issue=not check_only)
    except CommandExecutionError as exc:
        certs, bad, plaintext = {}, {source: str(exc)}, False
    out["certificates"] = {n: c.get("action") for n, c in certs.items()}
    if plaintext:
        out["certificates"] = "migration:plaintext is true: the stream goes in clear"
    elif bad:
        out["refused"] = [f"{n}: migration certificate: {why}" for n, why in sorted(bad.items())]
        return _failed(out)
    if check_only:
        out["comment"] = f"{target} can take {vm} (copying: {ready.get('copy') or 'nothing'})"
        return out
    copy = ready.get("copy") or []
    made = []
    try:
        if copy:
            made = _one("kvmcluster_migration.prepare", target, ssh, 300,
                        arg=[json.dumps(plan), json.dumps(copy)])["made"]
        result = _with_progress(
            vm, source, target, ssh, progress,
            lambda: _one("kvmcluster_migration.migrate", source, ssh, int(timeout),
                         arg=[vm, target], kwarg={"copy": json.dumps(copy),
                                                  "bandwidth": bandwidth}))
    except CommandExecutionError as exc:
        out["error"] = str(exc)
        if made:
            # Only what prepare made, and only while the VM is not defined there.
            out["target_cleanup"] = _one("kvmcluster_migration.unprepare", target, ssh, 120,
                                         arg=[vm, json.dumps(made)])
        return _failed(out)
    out.update(result)
    running, defined, _ = _where(vm, ssh, 60)
    out["running_on"], out["defined_on"] = running, defined
    out["migrated"] = running == [target] and defined == [target]
    copied = [d["path"] for d in plan.get("disks") or [] if d["target"] in (ready.get("copy")
                                                                           or [])]
    if out["migrated"] and copied:
        # The VM runs on the target from its own copies: the source's are stale now.
        out["source_cleanup"] = _one("kvmcluster_migration.source_cleanup", source, ssh, 120,
                                     arg=[vm, json.dumps(copied)])
    out["total_seconds"] = round(time.monotonic() - started, 2)
    if not out["migrated"]:
        return _failed(out)
    out["retcode"] = 0
    return out


def _model_vms(node):
    pillar = salt.pillar.get_pillar(__opts__, {"id": node}, node,
                                    saltenv=__opts__.get("saltenv") or "base").compile_pillar()
    vms = (pillar.get(ROOT) or {}).get("vms") or {}
    return {n: v.get("node") for n, v in vms.items() if isinstance(v, dict)}


def place(ssh=False, timeout=1800, progress=10):
    """
    Carry out the model's placement: every VM of the pillar (``kvmcluster:vms:<vm>:node``)
    that runs on another node is migrated live to its node (``migrate``). VMs that do not
    run anywhere are left to the state (it starts them on their node).

    CLI Example:

    .. code-block:: bash

        salt-run kvmcluster.place
        salt-run kvmcluster.place ssh=True
    """
    answered, missing = _call("kvmcluster_vm.list", "*", "glob", ssh, 60)
    if not answered:
        raise CommandExecutionError(f"no node answered: {missing}")
    model = _model_vms(sorted(answered)[0])
    moves, done = {}, {}
    for vm, node in sorted(model.items()):
        on = sorted(n for n, vms in answered.items()
                    if isinstance(vms, dict) and (vms.get(vm) or {}).get("state") == "running")
        if on and on != [node]:
            moves[vm] = node
    for vm, node in moves.items():
        done[vm] = migrate(vm, node, ssh=ssh, timeout=timeout, progress=progress)
    out = {"moved": done, "unreachable": missing, "retcode": 0}
    if any(not r.get("migrated") for r in done.values()):
        return _failed(out)
    return out
