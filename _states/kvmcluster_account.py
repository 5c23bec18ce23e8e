"""
State for the cluster's management account: in the libvirt and kvm groups, with the SSH
public keys of the model in its authorized_keys. Never created unless ``account:create``.
"""
import os
import pwd

__virtualname__ = "kvmcluster_account"


def __virtual__():
    return __virtualname__


def _auth_keys_path(user):
    return os.path.join(pwd.getpwnam(user).pw_dir, ".ssh", "authorized_keys")


def _present_keys(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return {" ".join(line.split()[:2]) for line in fh if line.strip()
                    and not line.startswith("#")}
    except FileNotFoundError:
        return set()


def _missing_keys(user, keys):
    have = _present_keys(_auth_keys_path(user))
    return [k for k in keys if " ".join(k.split()[:2]) not in have]


def present(name):
    """
    The model's ``account`` exists (created only when ``account:create`` is true), belongs
    to ``account:groups``, and has ``account:ssh_keys`` in its authorized_keys (keys that are
    already there and not in the model are left alone).

    name
        Any; reported back.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    acct = __salt__["kvmcluster_model.current"]()["account"]
    user = acct["name"]
    if not user:
        ret["comment"] = "no account in the model (kvmcluster:account:name); nothing to do"
        return ret
    changes = {}
    info = __salt__["user.info"](user)
    if not info:
        if not acct["create"]:
            ret.update(result=False, comment=f"account {user} does not exist and "
                       "kvmcluster:account:create is false: create it or set create: true")
            return ret
        changes["created"] = {"old": None, "new": user}
    missing_groups = [g for g in acct["groups"] if g not in (info.get("groups") or [])]
    absent_groups = [g for g in missing_groups if not __salt__["group.info"](g)]
    if absent_groups and not __opts__["test"]:
        ret.update(result=False, comment=f"group(s) {', '.join(absent_groups)} do not exist "
                   "(are the libvirt packages installed?)")
        return ret
    if missing_groups:
        changes["groups"] = {"old": sorted(info.get("groups") or []),
                             "new": sorted(set(info.get("groups") or []) | set(missing_groups))}
    keys = acct["ssh_keys"]
    missing_keys = keys if not info else _missing_keys(user, keys)
    if missing_keys:
        changes["ssh_keys"] = {"old": len(keys) - len(missing_keys), "new": len(keys)}
    if not changes:
        ret["comment"] = f"account {user}: groups and keys as the model says"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"account {user} would be changed")
        return ret
    if "created" in changes and not __salt__["user.add"](user, createhome=True):
        ret.update(result=False, comment=f"could not create account {user}")
        return ret
    if missing_groups and not __salt__["user.chgroups"](user, missing_groups, append=True):
        ret.update(result=False, comment=f"could not add {user} to {missing_groups}")
        return ret
    if missing_keys:
        ent = pwd.getpwnam(user)
        path = _auth_keys_path(user)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chown(os.path.dirname(path), ent.pw_uid, ent.pw_gid)
        with open(path, "a", encoding="utf-8") as fh:
            for k in missing_keys:
                fh.write(k.strip() + "\n")
        os.chown(path, ent.pw_uid, ent.pw_gid)
        os.chmod(path, 0o600)
    after = __salt__["user.info"](user)
    left = [g for g in acct["groups"] if g not in (after.get("groups") or [])]
    left_keys = _missing_keys(user, keys)
    if left or left_keys:
        ret.update(result=False, changes=changes,
                   comment=f"account {user} still lacks groups {left} / {len(left_keys)} keys")
        return ret
    ret.update(changes=changes, comment=f"account {user} updated")
    return ret
