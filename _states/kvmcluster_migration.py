"""
State for the migration transport between hypervisors (``kvmcluster:migration``).

Over SSH, a node's libvirtd logs in to the model's account on the target node with the
cluster's migration key, and checks the target's host key against the model's
(``nodes:<id>:ssh_host_keys``): never ``StrictHostKeyChecking=no``. The key, the peers'
host keys and an ssh_config drop-in that applies them only to the account at the peers'
addresses are the formula's files; the key's public half is in the account's
authorized_keys with ``restrict`` and ``from=`` the peers (``kvmcluster_account``). Over
TLS there is nothing to set up here beyond libvirt's TLS (``kvmcluster:libvirt:tls``).
"""
import os

__virtualname__ = "kvmcluster_migration"

CONFIG_DIR = "/etc/kvmcluster/migration"
KEY_FILE = f"{CONFIG_DIR}/id_ed25519"
KNOWN_HOSTS = f"{CONFIG_DIR}/known_hosts"
SSH_CONFIG = "/etc/ssh/ssh_config.d/60-kvmcluster-migration.conf"
HEAD = "# Managed by kvmcluster (pillar kvmcluster:migration). Local edits are replaced.\n"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _peers(view):
    me = view["self"]["name"]
    return {n: e for n, e in sorted(view["nodes"].items())
            if n != me and e.get("hypervisor", True)}


def _ssh_enabled(view):
    mig = view["migration"]
    return bool(mig["enabled"] and mig["transport"] == "ssh" and mig["ssh"].get("private_key")
                and view["account"]["name"] and view["self"].get("hypervisor", True))


def _known_hosts_text(view):
    """The peers' host keys under their address, host name and FQDN."""
    __utils__["kvmcluster_safe.check"]("known_hosts", "known_hosts", {
        n: [e["ip"], e["hostname"], e["fqdn"],
            *[word for key in e.get("ssh_host_keys") or [] for word in key.split(" ", 1)]]
        for n, e in _peers(view).items()})
    lines = []
    for e in _peers(view).values():
        names = ",".join(dict.fromkeys([e["ip"], e["hostname"], e["fqdn"]]))
        lines += [f"{names} {key}" for key in e.get("ssh_host_keys") or []]
    return HEAD + "\n".join(lines) + ("\n" if lines else "")


def _ssh_config_text(view):
    """Applies the key and the known hosts only to the account at the peers' addresses."""
    peers = _peers(view)
    hosts = ",".join(dict.fromkeys(
        h for e in peers.values() for h in (e["ip"], e["hostname"], e["fqdn"])))
    if not hosts:
        return HEAD + "# no other hypervisor in the model\n"
    return (HEAD + "# libvirt's live migrations to the other nodes of the cluster.\n"
            f"Match user {view['account']['name']} host {hosts}\n"
            f"    IdentityFile {KEY_FILE}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {KNOWN_HOSTS}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 10\n")


def _desired_files(view):
    """``{path: (text, mode)}``; text None: the file must not be there."""
    if not _ssh_enabled(view):
        return {KEY_FILE: (None, 0o600), KNOWN_HOSTS: (None, 0o644), SSH_CONFIG: (None, 0o644)}
    key = view["migration"]["ssh"]["private_key"]
    if not key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise _skeleton().Refused("the migration key was withheld from this node's model (a "
                                  "runner's call); the state runs with the node's pillar")
    key = key.strip() + "\n"
    return {KEY_FILE: (key, 0o600), KNOWN_HOSTS: (_known_hosts_text(view), 0o644),
            SSH_CONFIG: (_ssh_config_text(view), 0o644)}


def _mode(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def transport(name):
    """
    The files of the SSH migration transport are as the model says (or gone when migration
    over SSH is off). The key's content never appears in the changes: only that it changed.

    name
        Any; reported back.
    """
    view = __salt__["kvmcluster_model.current"]()
    skip = _skeleton().not_a_hypervisor(name, view)
    if skip:
        return skip
    want = _desired_files(view)

    def diff():
        changes = {}
        for path, (text, mode) in want.items():
            cur = __salt__["kvmcluster_node.file_text"](path)
            if cur == text and (text is None or _mode(path) == mode):
                continue
            if path == KEY_FILE:
                changes[path] = {"old": "present" if cur is not None else None,
                                 "new": "present" if text is not None else None}
                if cur is not None and text is not None:
                    changes[path] = {"old": "other key" if cur != text else f"mode {_mode(path):o}",
                                     "new": "the model's key, mode 600"}
            else:
                changes[path] = {"old": cur, "new": text}
        return changes

    def apply(changes):
        os.makedirs(CONFIG_DIR, mode=0o755, exist_ok=True)
        for path in changes:
            text, mode = want[path]
            if text is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                __salt__["kvmcluster_node.write_file"](path, text, mode=mode)

    return _skeleton().converge(
        name, __opts__["test"], diff, apply, diff,
        ok="migration transport as the model says",
        planned=lambda c: f"migration transport would change: {', '.join(sorted(c))}",
        done=lambda c: f"migration transport changed: {', '.join(sorted(c))}")
