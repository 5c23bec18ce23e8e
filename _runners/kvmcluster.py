"""
Cluster-wide actions of kvmcluster, run on the management node (``salt-run``).

``confirm`` reaches every node at the address the cluster model gives it (after a
re-addressing, the new one) over new connections and confirms its pending network change:
with a salt-master through the minions, with salt-ssh through the roster (each node's host
replaced by its model address). Use it with ``saltutil.sync_runners`` on a master, or with
``runner_dirs`` pointing at this directory.
"""
import logging
import os
import tempfile
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
