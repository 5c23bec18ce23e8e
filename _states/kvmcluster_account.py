"""
State for the cluster's management account on every node (management nodes included):
SSH key login with the model's keys, password-less sudo, and on hypervisors the libvirt and
kvm groups. Never created unless ``account:create``.

- Keys live in a marked block of ``authorized_keys``: a key removed from pillar is removed
  from the node; keys outside the block (the site's own) are never touched.
- sudo: ``/etc/sudoers.d/kvmcluster``; the new text is written next to it, checked with
  ``visudo -cf`` and only then moved into place (a file sudo cannot parse would lock every
  sudo user out). ``account:sudo: false`` removes it.
"""
import os
import pwd

__virtualname__ = "kvmcluster_account"

BEGIN = "# BEGIN kvmcluster (pillar kvmcluster:account:ssh_keys)"
END = "# END kvmcluster"
SUDOERS = "/etc/sudoers.d/kvmcluster"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _auth_keys_path(user):
    return os.path.join(pwd.getpwnam(user).pw_dir, ".ssh", "authorized_keys")


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")


def _key_id(line):
    """The key's type and body, past any options (``restrict,from=...``)."""
    words = line.split()
    for i, w in enumerate(words):
        if w.startswith(_KEY_TYPES):
            return " ".join(words[i:i + 2])
    return " ".join(words[:2])


def _keys_text(current, keys):
    """``authorized_keys`` with the formula's block holding ``keys`` (the site's lines kept;
    a model key that sits outside the block moves into it)."""
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
    return [f'restrict,from="{",".join(peers)}" {key} kvmcluster-migration']


def _sudoers_text(user):
    """The sudoers drop-in for ``user``."""
    return (f"# Managed by kvmcluster (pillar kvmcluster:account). Checked with visudo.\n"
            f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n")


def _visudo_ok(path):
    res = __salt__["cmd.run_all"](["visudo", "-c", "-q", "-f", path], python_shell=False,
                                  ignore_retcode=True)
    return res["retcode"] == 0, (res["stderr"] or res["stdout"]).strip()


def _install_sudoers(text, path=SUDOERS):
    """Write ``text`` beside ``path``, check it with visudo, then move it into place; a text
    visudo refuses is never installed and the old file stays."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.kvmcluster-new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o440)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        ok, why = _visudo_ok(tmp)
        if not ok:
            raise _skeleton().Refused(f"visudo refuses the new {path} ({why}); the old file "
                                      "stays")
        os.chown(tmp, 0, 0)
        os.chmod(tmp, 0o440)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def present(name, packages=()):
    """
    The model's ``account`` exists (created only when ``account:create`` is true), has
    exactly the model's ``ssh_keys`` in the formula's block of its authorized_keys, has
    password-less sudo when ``account:sudo`` (``packages`` bring sudo and visudo), and on a
    hypervisor belongs to ``account:groups``.

    name
        Any; reported back.
    packages
        map.jinja ``pkgs:account`` (sudo).
    """
    view = __salt__["kvmcluster_model.current"]()
    acct = view["account"]
    user = acct["name"]
    if not user:
        return _skeleton().ret(name, comment="no account in the model "
                               "(kvmcluster:account:name); nothing to do")
    test = __opts__["test"]
    hypervisor = view["self"].get("hypervisor", True)
    groups = list(acct["groups"]) if hypervisor else []
    acct = dict(acct, ssh_keys=list(acct["ssh_keys"]) + _migration_keys(view))

    def diff():
        changes = {}
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
        cur = _read(_auth_keys_path(user)) if info else None
        want = _keys_text(cur, acct["ssh_keys"])
        if (cur or "") != want:
            block = [k for k in (cur or "").splitlines()
                     if any(w.startswith(_KEY_TYPES) for w in k.split()[:3])]
            changes["ssh_keys"] = {
                "old": sorted(_key_id(k) for k in block if _key_id(k) in
                              {_key_id(x) for x in _block_keys(cur)}),
                "new": sorted(_key_id(k) for k in acct["ssh_keys"])}
        cur_sudo = _read(SUDOERS)
        want_sudo = _sudoers_text(user) if acct.get("sudo") else None
        if cur_sudo != want_sudo:
            changes[SUDOERS] = {"old": cur_sudo, "new": want_sudo}
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
        if "ssh_keys" in changes:
            ent = pwd.getpwnam(user)
            path = _auth_keys_path(user)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.chown(os.path.dirname(path), ent.pw_uid, ent.pw_gid)
            text = _keys_text(_read(path), acct["ssh_keys"])
            tmp = path + ".kvmcluster-new"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chown(tmp, ent.pw_uid, ent.pw_gid)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        if SUDOERS in changes:
            if changes[SUDOERS]["new"] is None:
                os.unlink(SUDOERS)
            else:
                _install_sudoers(changes[SUDOERS]["new"])

    def verify():
        left = diff()
        left.pop("packages", None)
        return left

    return _skeleton().converge(
        name, test, diff, apply, verify,
        ok=f"account {user}: keys, sudo and groups as the model says",
        planned=lambda c: f"account {user} would change: {', '.join(c)}",
        done=lambda c: f"account {user} changed: {', '.join(c)}")


def _block_keys(text):
    lines = (text or "").splitlines()
    if BEGIN in lines and END in lines[lines.index(BEGIN):]:
        start = lines.index(BEGIN)
        return lines[start + 1:lines.index(END, start)]
    return []
