"""
State for the cluster's management account on every node (management nodes included):
SSH key login with the model's keys, password-less sudo, and on hypervisors the libvirt and
kvm groups. Never created unless ``account:create``.

- Keys live in a marked block of ``authorized_keys``: a key removed from pillar is removed
  from the node; keys outside the block (the site's own) are never touched.
- sudo: ``/etc/sudoers.d/kvmcluster``; the new text is written next to it, checked with
  ``visudo -cf`` and only then moved into place (a file sudo cannot parse would lock every
  sudo user out). ``account:sudo: false`` removes it.
- Revocation: ``account:state: absent``, an account removed from pillar or renamed loses the
  sudoers file and the formula's keys (the accounts the formula gave keys to are recorded in
  ``/var/lib/kvmcluster/accounts.json``); the account itself stays.
- ``~/.ssh`` belongs to the account, so root treats it as OpenSSH's StrictModes does: a
  ``.ssh`` or ``authorized_keys`` that is a symbolic link, not a directory or regular file,
  owned by another account, or writable by group or others is refused with the reason, and
  never opened through. Files are read and written through descriptors relative to the
  opened directory, and replaced atomically.
"""
import errno
import json
import os
import pwd
import secrets
import stat

__virtualname__ = "kvmcluster_account"

BEGIN = "# BEGIN kvmcluster (pillar kvmcluster:account:ssh_keys)"
END = "# END kvmcluster"
SUDOERS = "/etc/sudoers.d/kvmcluster"
RECORD = "/var/lib/kvmcluster/accounts.json"
# The migration key runs libvirt's socket proxy and nothing else: no shell, no sudo.
MIGRATION_COMMAND = "/usr/bin/virt-ssh-helper qemu:///system"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _read(path):
    """A root-owned file of the formula's (sudoers, the record); never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, encoding="utf-8") as fh:
        return fh.read()


_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")


def _key_id(line):
    """The key's type and body, past any options (``restrict,from=...``)."""
    words = line.split()
    for i, w in enumerate(words):
        if w.startswith(_KEY_TYPES):
            return " ".join(words[i:i + 2])
    return " ".join(words[:2])


# ---- the account's ~/.ssh, as StrictModes would have it ----------------------------------

def _unsafe(st, uid, what):
    """Why OpenSSH's StrictModes would refuse this inode, or None."""
    if st.st_uid not in (uid, 0):
        return f"{what} belongs to uid {st.st_uid}, not the account"
    if st.st_mode & 0o022:
        return f"{what} is writable by group or others (mode {oct(st.st_mode & 0o777)})"
    return None


class SshDir:
    """The account's ``~/.ssh`` opened without following links: ``read()`` and ``write()``
    of ``authorized_keys`` through descriptors relative to it."""

    def __init__(self, user, create=False):
        self.user = user
        ent = pwd.getpwnam(user)
        self.uid, self.gid, self.home = ent.pw_uid, ent.pw_gid, ent.pw_dir
        self.path = os.path.join(self.home, ".ssh")
        self.fd = None
        home_fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            why = _unsafe(os.fstat(home_fd), self.uid, f"home directory {self.home}")
            if why:
                raise _skeleton().Refused(f"account {user}: {why}; sshd would refuse it too")
            try:
                self.fd = os.open(".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=home_fd)
            except FileNotFoundError:
                if not create:
                    return
                os.mkdir(".ssh", 0o700, dir_fd=home_fd)
                self.fd = os.open(".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=home_fd)
                os.fchown(self.fd, self.uid, self.gid)
                os.fchmod(self.fd, 0o700)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _skeleton().Refused(
                        f"account {user}: {self.path} is a symbolic link or not a directory; "
                        "the formula never writes through it (remove it, or make it a "
                        "directory of the account's)") from None
                raise
            why = _unsafe(os.fstat(self.fd), self.uid, self.path)
            if why:
                self.close()
                raise _skeleton().Refused(f"account {user}: {why}; fix it (sshd's StrictModes "
                                          "refuses it too)")
        finally:
            os.close(home_fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, name="authorized_keys"):
        """The file's text, None when absent; refused when it is a link or no regular file
        of the account's (a FIFO would hang the run: opened non-blocking, then checked)."""
        if self.fd is None:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _skeleton().Refused(
                    f"account {self.user}: {self.path}/{name} is a symbolic link; the formula "
                    "never reads or writes through it (replace it with a file)") from None
            raise
        with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _skeleton().Refused(f"account {self.user}: {self.path}/{name} is not a "
                                          "regular file")
            why = _unsafe(st, self.uid, f"{self.path}/{name}")
            if why:
                raise _skeleton().Refused(f"account {self.user}: {why}")
            return fh.read()

    def write(self, text, name="authorized_keys"):
        """``text`` as the account's file (0600), by a new file under a random name made in
        the opened directory and renamed over the old one (a link there is replaced, never
        followed)."""
        tmp = f".{name}.kvmcluster-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=self.fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fchown(fh.fileno(), self.uid, self.gid)
                os.fchmod(fh.fileno(), 0o600)
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            raise


def _authorized_keys(user):
    """The account's authorized_keys text (None: none, or no such account)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    with SshDir(user) as d:
        return d.read()


def _recorded():
    """The accounts the formula gave keys or sudo to, as recorded by earlier runs."""
    try:
        data = json.loads(_read(RECORD) or "[]")
    except ValueError:
        return []
    return sorted({u for u in data if isinstance(u, str)}) if isinstance(data, list) else []


def _record(users):
    os.makedirs(os.path.dirname(RECORD), mode=0o700, exist_ok=True)
    tmp = f"{RECORD}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(sorted(set(users)), fh)
    os.replace(tmp, RECORD)


def _keys_text(current, keys):
    """``authorized_keys`` with the formula's block holding ``keys`` (the site's lines kept;
    a model key that sits outside the block moves into it)."""
    __utils__["kvmcluster_safe.check"]("authorized_keys", "authorized_keys",
                                       {"ssh_keys": list(keys)})
    lines = (current or "").splitlines()
    if BEGIN in lines and END in lines[lines.index(BEGIN):]:
        start = lines.index(BEGIN)
        end = lines.index(END, start)
        del lines[start:end + 1]
    ours = {_key_id(k) for k in keys}
    lines = [ln for ln in lines if _key_id(ln) not in ours or ln.lstrip().startswith("#")]
    if keys:
        lines += [BEGIN, *[k.strip() for k in keys], END]
    return "\n".join(lines) + "\n" if lines else ""


def _migration_keys(view):
    """The migration key's line for a hypervisor (libvirtd of the other hypervisors logs in
    with it): nothing but commands, from the peers' addresses only."""
    mig = view["migration"]
    me = view["self"]
    if not (mig["enabled"] and mig["transport"] == "ssh" and mig["ssh"].get("public_key")
            and me.get("hypervisor", True)):
        return []
    peers = sorted(e["ip"] for n, e in view["nodes"].items()
                   if n != me["name"] and e.get("hypervisor", True) and e.get("ip"))
    if not peers:
        return []
    key = " ".join(mig["ssh"]["public_key"].split()[:2])
    return [f'restrict,from="{",".join(peers)}",command="{MIGRATION_COMMAND}" {key} '
            "kvmcluster-migration"]


def _sudoers_text(user):
    """The sudoers drop-in for ``user``."""
    __utils__["kvmcluster_safe.check"]("sudoers", "sudoers", {"account:name": user})
    return (f"# Managed by kvmcluster (pillar kvmcluster:account). Checked with visudo.\n"
            f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n")


def _visudo_ok(path):
    res = __salt__["cmd.run_all"](["visudo", "-c", "-q", "-f", path], python_shell=False,
                                  ignore_retcode=True)
    return res["retcode"] == 0, (res["stderr"] or res["stdout"]).strip()


def _install_sudoers(text, path=None):
    """Write ``text`` beside ``path``, check it with visudo, then move it into place; a text
    visudo refuses is never installed and the old file stays."""
    path = path or SUDOERS  # read at call time: a test's path is never the real one
    tmp = os.path.join(os.path.dirname(path),
                       f".{os.path.basename(path)}.kvmcluster-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o440)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        ok, why = _visudo_ok(tmp)
        if not ok:
            raise _skeleton().Refused(f"visudo refuses the new {path} ({why}); the old file "
                                      "stays")
        os.chown(tmp, 0, 0, follow_symlinks=False)
        os.chmod(tmp, 0o440)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _sudoers_user(text):
    """The account the formula's sudoers file grants (None: no such file)."""
    for line in (text or "").splitlines():
        if line and not line.startswith("#"):
            return line.split()[0]
    return None


def present(name, packages=()):
    """
    The model's ``account`` exists (created only when ``account:create`` is true), has
    exactly the model's ``ssh_keys`` in the formula's block of its authorized_keys, has
    password-less sudo when ``account:sudo`` (``packages`` bring sudo and visudo), and on a
    hypervisor belongs to ``account:groups``. An account the formula managed before and the
    model no longer names (``account:state: absent``, removed, renamed) loses the sudoers
    file and the formula's keys.

    name
        Any; reported back.
    packages
        map.jinja ``pkgs:account`` (sudo).
    """
    view = __salt__["kvmcluster_model.current"]()
    acct = view["account"]
    user = acct["name"] if acct.get("state", "present") == "present" else None
    test = __opts__["test"]
    hypervisor = view["self"].get("hypervisor", True)
    groups = list(acct["groups"]) if hypervisor else []
    acct = dict(acct, ssh_keys=list(acct["ssh_keys"]) + _migration_keys(view)) if user \
        else dict(acct, ssh_keys=[])

    def revoked():
        """Accounts the formula gave keys or sudo to that the model no longer names."""
        before = set(_recorded())
        granted = _sudoers_user(_read(SUDOERS))
        if granted:
            before.add(granted)
        return sorted(u for u in before if u != user)

    def diff():
        changes = {}
        for old in revoked():
            block = _block_keys(_authorized_keys(old))
            if block:
                changes[f"revoked:{old}"] = {"old": sorted(_key_id(k) for k in block),
                                             "new": []}
        cur_sudo = _read(SUDOERS)
        want_sudo = _sudoers_text(user) if user and acct.get("sudo") else None
        if cur_sudo != want_sudo:
            changes[SUDOERS] = {"old": cur_sudo, "new": want_sudo}
        if not user:
            return changes
        if acct.get("sudo"):
            pkgs = _skeleton().packages_diff(__salt__, list(packages), test)
            if pkgs:
                changes["packages"] = pkgs
        info = __salt__["user.info"](user)
        if not info:
            if not acct["create"]:
                raise _skeleton().Refused(f"account {user} does not exist and "
                                          "kvmcluster:account:create is false: create it or "
                                          "set create: true")
            changes["created"] = {"old": None, "new": user}
        have = sorted(info.get("groups") or []) if info else []
        missing = [g for g in groups if g not in have]
        if missing:
            absent = [g for g in missing if not __salt__["group.info"](g)]
            if absent and not test:
                raise _skeleton().Refused(f"group(s) {', '.join(absent)} do not exist (are the "
                                          "libvirt packages installed?)")
            changes["groups"] = {"old": have, "new": sorted(set(have) | set(missing))}
        cur = _authorized_keys(user) if info else None
        want = _keys_text(cur, acct["ssh_keys"])
        if (cur or "") != want:
            changes["ssh_keys"] = {"old": sorted(_key_id(k) for k in _block_keys(cur)),
                                   "new": sorted(_key_id(k) for k in acct["ssh_keys"])}
        return changes

    def apply(changes):
        if "packages" in changes:
            _skeleton().packages_install(__salt__, changes["packages"])
        if "created" in changes and not __salt__["user.add"](user, createhome=True):
            raise _skeleton().Refused(f"could not create account {user}")
        if "groups" in changes:
            add = sorted(set(changes["groups"]["new"]) - set(changes["groups"]["old"]))
            if not __salt__["user.chgroups"](user, add, append=True):
                raise _skeleton().Refused(f"could not add {user} to {add}")
        for key in changes:
            if key.startswith("revoked:"):
                with SshDir(key[len("revoked:"):]) as d:
                    d.write(_keys_text(d.read(), []))
        if "ssh_keys" in changes:
            with SshDir(user, create=True) as d:
                d.write(_keys_text(d.read(), acct["ssh_keys"]))
        if SUDOERS in changes:
            if changes[SUDOERS]["new"] is None:
                os.unlink(SUDOERS)
            else:
                _install_sudoers(changes[SUDOERS]["new"])
        _record([user] if user else [])

    def verify():
        left = diff()
        left.pop("packages", None)
        return left

    if not user and not revoked() and _read(SUDOERS) is None:
        return _skeleton().ret(name, comment="no account in the model "
                               "(kvmcluster:account:name); nothing to do")
    who = user or "(none)"
    return _skeleton().converge(
        name, test, diff, apply, verify,
        ok=f"account {who}: keys, sudo and groups as the model says",
        planned=lambda c: f"account {who} would change: {', '.join(c)}",
        done=lambda c: f"account {who} changed: {', '.join(c)}")


def _block_keys(text):
    lines = (text or "").splitlines()
    if BEGIN in lines and END in lines[lines.index(BEGIN):]:
        start = lines.index(BEGIN)
        return lines[start + 1:lines.index(END, start)]
    return []
