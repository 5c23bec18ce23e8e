"""
States for the cluster's shared secondary storage (``storage:secondary`` of the model):

- ``packages``: the NFS server packages on the server node, the client ones everywhere.
- ``exported``: on the server, the export directory and the formula's exports file;
  ``exportfs -ra`` only when the export changed (mounted clients are never dropped by a
  restart); the NFS service enabled and running.
- ``mounted``: the export at the mountpoint on every node, in fstab and live, waiting for
  the server within bounds. On the server itself the export directory is bind-mounted at
  the mountpoint (no NFS loopback mount), so the path is the same on every node.

All do nothing when the model has no secondary storage.
"""
import os

__virtualname__ = "kvmcluster_nfs"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _ctx():
    view = __salt__["kvmcluster_model.current"]()
    sec = view["storage"]["secondary"]
    if not sec["enabled"]:
        return view, None, None
    # An external share has no server in the model.
    server = view["nodes"][sec["server"]] if sec.get("server") else None
    return view, sec, server


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def _off(ret):
    ret["comment"] = "no secondary storage in the model (kvmcluster:storage:secondary)"
    return ret


def _not_client(view, server):
    """A management-only node other than the server mounts nothing."""
    me = view["self"]
    return not me.get("hypervisor", True) and (server is None or me["name"] != server["name"])


def _no_storage_address(ret, view):
    """With a storage network, this node's address there must be on one of its interfaces
    (the site configures it): the share is served and mounted over it only."""
    sip = view["self"].get("storage_ip")
    if view.get("networks", {}).get("storage") and sip and \
            not __salt__["kvmcluster_node.local_address"](sip):
        ret.update(result=False, comment=f"storage_ip {sip} is on no interface of "
                   f"{view['self']['name']}: configure it on the storage network's interface "
                   "(kvmcluster:networks:storage) first")
        return ret
    return None


def _no_share(ret, view):
    ret["comment"] = (f"{view['self']['name']} is a management node: it neither serves nor "
                      "mounts the secondary storage")
    return ret


def packages(name, server_pkgs, client_pkgs):
    """
    The NFS packages this node's role needs are installed.

    name
        Any; reported back.
    server_pkgs, client_pkgs
        Package names of this OS family (map.jinja ``pkgs:nfs_server``/``nfs_client``).
    """
    ret = _ret(name)
    view, sec, server = _ctx()
    if not sec:
        return _off(ret)
    if _not_client(view, server):
        return _no_share(ret, view)
    if server is None:
        ret["comment"] = "the secondary storage is external: the site mounts it"
        return ret
    is_server = view["self"]["name"] == server["name"]
    want = list(dict.fromkeys([*(server_pkgs if is_server else []), *client_pkgs]))
    test = __opts__["test"]
    return _skeleton().converge(
        name, test, lambda: _skeleton().packages_diff(__salt__, want, test),
        lambda changes: _skeleton().packages_install(__salt__, changes),
        ok=f"installed: {', '.join(want)}", planned=lambda c: f"would install {', '.join(c)}",
        done=lambda c: f"installed {', '.join(c)}")


def _squashes(options):
    """Whether the export maps the clients' root to an anonymous account: the kernel's
    default unless ``no_root_squash`` is given."""
    return "no_root_squash" not in options


def _anonymous(options, account):
    """(options with the anonymous account, (uid, gid) clients' root becomes). A root-squashed
    client's root acts as the QEMU account: libvirt's volumes are then born the QEMU
    account's, and root on a client holds no more than QEMU does."""
    given = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in options if "=" in o}
    out = list(options)
    for key, field in (("anonuid", "uid"), ("anongid", "gid")):
        if key not in given:
            given[key] = account[field]
            out.append(f"{key}={account[field]}")
    return out, (int(given["anonuid"]), int(given["anongid"]))


EXPORT_DIR_MODE = 0o750  # a squashed share: the QEMU account's, closed to other accounts


def _dir_label(path):
    """'uid:gid mode' of the export directory, None when missing; a link is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not os.path.isdir(path) or os.path.islink(path):
        raise _skeleton().Refused(f"{path} is not a directory (a link or a file): the export "
                                  "directory must be a real one")
    return f"{st.st_uid}:{st.st_gid} {st.st_mode & 0o7777:04o}"


def _own_dir(path, uid, gid, mode):
    """The export directory made (if missing) and given to uid:gid with mode, through its
    descriptor: never through a link put in its place."""
    os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _not_owned(path, uid, limit=3):
    """Files at the top of the export not owned by ``uid`` (up to ``limit`` names) and
    their count: a root-squashed client's libvirt cannot open them."""
    names, count = [], 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False) and \
                        entry.stat(follow_symlinks=False).st_uid != uid:
                    count += 1
                    if len(names) < limit:
                        names.append(entry.name)
    except OSError:
        pass
    return count, names


def exported(name, exports_file, service):
    """
    On the model's NFS server: the export directory exists, ``exports_file`` exports it to
    the model's clients with its options, the kernel's export table has it, and ``service``
    is enabled and running. Elsewhere: nothing.

    A root-squashed export (the default: ``no_root_squash`` not in the options) maps the
    clients' root to this node's QEMU account (``anonuid``/``anongid``, unless the options
    name them), and the export directory is that account's, mode 0750.

    name
        Any; reported back.
    exports_file
        The formula's own file under /etc/exports.d.
    service
        The NFS server unit (nfs-server.service).
    """
    ret = _ret(name)
    view, sec, server = _ctx()
    if not sec:
        return _off(ret)
    if server is None:
        ret["comment"] = "the secondary storage is external: nothing is exported"
        return ret
    if view["self"]["name"] != server["name"]:
        ret["comment"] = f"not the NFS server ({server['name']} is)"
        return ret
    if _no_storage_address(ret, view):
        return ret
    path, clients, options = sec["export_path"], sec["clients"], list(sec["export_options"])
    owner = None
    if _squashes(options):
        account = __salt__["kvmcluster_node.qemu_account"]()
        if account is None and not all(any(o.startswith(k) for o in options)
                                       for k in ("anonuid=", "anongid=")):
            ret.update(result=False, comment="the export squashes root to the QEMU account, "
                       f"and {server['name']} has none (libvirt-qemu or qemu): install "
                       "libvirt there, or name anonuid= and anongid= in "
                       "kvmcluster:storage:secondary:export_options")
            return ret
        options, (uid, gid) = _anonymous(options, account or {})
        owner = (uid, gid, EXPORT_DIR_MODE)
    text = __salt__["kvmcluster_nfs.exports_text"](path, clients, options)
    changes = {}
    try:
        label = _dir_label(path)
    except _skeleton().Refused as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    if owner is None:
        if label is None:
            changes["export_dir"] = {"old": None, "new": path}
    else:
        want = f"{owner[0]}:{owner[1]} {owner[2]:04o}"
        if label != want:
            changes["export_dir"] = {"old": label and f"{path} {label}",
                                     "new": f"{path} {want}"}
    cur = __salt__["kvmcluster_node.file_text"](exports_file)
    if cur != text:
        changes[exports_file] = {"old": cur, "new": text}
    unit = __salt__["kvmcluster_node.unit_state"](service)
    if unit["enabled"] != "enabled" or not unit["active"]:
        changes["service"] = {"old": unit["label"],
                              "new": "enabled/active"}
    live = __salt__["kvmcluster_nfs.exported"](path)
    if sorted(live) != sorted(clients):
        changes["exported_to"] = {"old": sorted(live), "new": sorted(clients)}
    note = ""
    if owner is not None:
        count, names = _not_owned(path, owner[0])
        if count and any("no_root_squash" in o for o in live.values()):
            # Squashing now would close a running cluster's disks to its clients: the
            # operator decides (chown them, or keep no_root_squash), not an upgrade.
            ret.update(result=False, comment=(
                f"{path} is exported with no_root_squash and {count} file(s) there are not "
                f"uid {owner[0]}'s ({', '.join(names)}): squashing root would close them to "
                f"the clients. chown them to the QEMU account (uid {owner[0]}) first, or set "
                "kvmcluster:storage:secondary:export_options with no_root_squash"))
            return ret
        if count:
            # Not a change the state makes: the files are the site's (see docs/security.rst).
            note = (f"; {count} file(s) there are not uid {owner[0]}'s ({', '.join(names)}): "
                    "root-squashed clients cannot open them; chown them to the QEMU account")
    if not changes:
        ret["comment"] = f"{path} exported to {', '.join(clients)}{note}"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"export of {path} would change{note}")
        return ret
    try:
        if owner is None:
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif "export_dir" in changes:
            _own_dir(path, *owner)
        if cur != text:
            __salt__["kvmcluster_node.write_file"](exports_file, text)
        if "service" in changes:
            # Starting the service exports what the files say.
            __salt__["kvmcluster_node.systemctl"]("enable", "--now", service)
        if cur != text or sorted(__salt__["kvmcluster_nfs.exported"](path)) != sorted(clients):
            __salt__["kvmcluster_nfs.reexport"]()
        live = __salt__["kvmcluster_nfs.exported"](path)
        unit = __salt__["kvmcluster_node.unit_state"](service)
        label = _dir_label(path)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, changes=changes, comment=str(exc))
        return ret
    ok = sorted(live) == sorted(clients) and unit["active"] and (
        owner is None or label == f"{owner[0]}:{owner[1]} {owner[2]:04o}")
    ret.update(changes=changes, result=ok,
               comment=f"{path} exported to {', '.join(clients)}{note}" if ok else
               f"export of {path} is {sorted(live)}, service active={unit['active']}, "
               f"directory {label}")
    return ret


def _same_dir(a, b):
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _fstab_line(sec, is_server):
    __utils__["kvmcluster_safe.check"]("/etc/fstab", "fstab", {
        "export_path": sec["export_path"], "mountpoint": sec["mountpoint"],
        "mount_options": list(sec["mount_options"]),
        "server": "" if is_server else sec["address"]})
    if is_server:
        return f"{sec['export_path']} {sec['mountpoint']} none bind 0 0"
    opts = ",".join(sec["mount_options"])
    return f"{sec['address']}:{sec['export_path']} {sec['mountpoint']} nfs {opts} 0 0"


def _fstab_diff(fstab_text, mountpoint, line):
    """(new fstab text, old line or None); one line per mountpoint, ours replacing others."""
    lines = (fstab_text or "").splitlines()
    old = None
    out = []
    for ln in lines:
        f = ln.split()
        if len(f) >= 2 and not ln.lstrip().startswith("#") and f[1] == mountpoint:
            old = ln
            continue
        out.append(ln)
    if old == line:
        return fstab_text, old
    out.append(line)
    return "\n".join(out) + "\n", old


def mounted(name, fstab="/etc/fstab"):
    """
    The secondary storage is at the model's mountpoint on this node, persistently (fstab)
    and live, mounted only when it is not already: an NFS mount of the server's export (the
    server bind-mounts its export directory instead). Waits for the server within
    ``storage:secondary:wait_timeout``; fails within about 30 s naming the server when it
    does not answer at all.

    name
        Any; reported back.
    """
    ret = _ret(name)
    view, sec, server = _ctx()
    if not sec:
        return _off(ret)
    if _not_client(view, server):
        return _no_share(ret, view)
    if server is None:
        return _external(ret, view, sec)
    if _no_storage_address(ret, view):
        return ret
    is_server = view["self"]["name"] == server["name"]
    mp = sec["mountpoint"]
    line = _fstab_line(sec, is_server)
    cur_fstab = __salt__["kvmcluster_node.file_text"](fstab) or ""
    new_fstab, old_line = _fstab_diff(cur_fstab, mp, line)
    changes = {}
    if new_fstab != cur_fstab:
        changes[fstab] = {"old": old_line, "new": line}
    live = __salt__["kvmcluster_nfs.mount_of"](mp)
    want_source = sec["export_path"] if is_server else f"{sec['address']}:{sec['export_path']}"
    if live is None:
        changes["mounted"] = {"old": None, "new": want_source}
    elif is_server:
        # A bind mount shows the filesystem's device and a root inside it: compare inodes.
        if not _same_dir(mp, sec["export_path"]):
            ret.update(result=False, comment=f"{mp} has {live['source']} mounted, not a bind "
                       f"of {sec['export_path']}; unmount it first (guests may use it)")
            return ret
    elif live["source"] != want_source or not live["fstype"].startswith("nfs"):
        ret.update(result=False, comment=f"{mp} has {live['source']} ({live['fstype']}) "
                   f"mounted, not {want_source}; unmount it first (guests may use it)")
        return ret
    if not changes:
        ret["comment"] = f"{want_source} mounted at {mp}"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{want_source} would be mounted at {mp}")
        return ret
    note = ""
    try:
        if new_fstab != cur_fstab:
            __salt__["kvmcluster_node.write_file"](fstab, new_fstab)
        if "mounted" in changes:
            if is_server:
                os.makedirs(sec["export_path"], exist_ok=True)
                __salt__["kvmcluster_nfs.mount"](sec["export_path"], mp, "none", ["bind"])
            else:
                waited = __salt__["kvmcluster_nfs.wait_and_mount"](
                    server["name"], sec["address"], sec["export_path"], mp,
                    sec["mount_options"], sec["wait_timeout"])
                # In the comment, not in changes: test=True cannot know it.
                note = f"; waited {waited} s for {server['name']}" if waited else ""
        live = __salt__["kvmcluster_nfs.mount_of"](mp)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, changes={k: v for k, v in changes.items() if k != "mounted"},
                   comment=str(exc))
        return ret
    if live is None:
        ret.update(result=False, changes=changes, comment=f"{mp} is not mounted after mounting")
        return ret
    ret.update(changes=changes, comment=f"{want_source} mounted at {mp}{note}")
    return ret


MARKERS = ".kvmcluster/nodes"


def _marker_kind(files, mp, me):
    """What is at this node's marker on the share: ``absent``, ``file`` or something else."""
    try:
        fd = files["kvmcluster_files.open_dir"](mp, MARKERS)
    except FileNotFoundError:
        return "absent"
    try:
        return files["kvmcluster_files.kind"](fd, me)
    finally:
        os.close(fd)


def _external(ret, view, sec):
    """A share the site mounts: it must be mounted and writable here; the node leaves a
    marker (``<mountpoint>/.kvmcluster/nodes/<node>``) so that every node can see which
    others share the same filesystem."""
    mp, me = sec["mountpoint"], view["self"]["name"]
    live = __salt__["kvmcluster_nfs.mount_of"](mp)
    if live is None:
        ret.update(result=False, comment=f"the external secondary storage is not mounted at "
                   f"{mp} on {me} (kvmcluster:storage:secondary:mountpoint); mount it first")
        return ret
    if "ro" in live["options"] or not os.access(mp, os.W_OK):
        ret.update(result=False, comment=f"{mp} ({live['source']}, {live['fstype']}) is "
                   f"read-only on {me}; the secondary storage must be writable")
        return ret
    marker = os.path.join(mp, MARKERS, me)
    files = __utils__
    changes = {}
    try:
        # Whoever else writes to the share could have planted a link on the way: looked at
        # and made without following one (kvmcluster_files).
        here = _marker_kind(files, mp, me)
    except OSError as exc:
        ret.update(result=False, comment=f"{mp} on {me}: {exc}")
        return ret
    if here not in ("file", "absent"):
        ret.update(result=False, comment=f"{marker} on {me} is a {here}, not the node's marker "
                   "file: someone else put it there; remove it (nothing was written)")
        return ret
    if here == "absent":
        changes["marker"] = {"old": None, "new": marker}
    where = f"{live['source']} ({live['fstype']}) at {mp}"
    if changes and __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{where}: would leave {me}'s marker")
        return ret
    try:
        fd = files["kvmcluster_files.open_dir"](mp, MARKERS, make=True)
        try:
            if changes:
                files["kvmcluster_files.create"](
                    fd, me, f"{view['self'].get('ip')}\n".encode(), 0o644)
            seen = sorted(os.listdir(fd))
        finally:
            os.close(fd)
    except OSError as exc:
        ret.update(result=False, changes={}, comment=f"{mp} on {me}: {exc}")
        return ret
    others = [n for n in seen if n != me and n in view["nodes"]]
    ret.update(changes=changes, comment=f"{where}; shared with: {', '.join(others) or 'no other node yet'}")
    return ret
