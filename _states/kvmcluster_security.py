"""
States for the node's MAC system and the cluster's pool paths.

- AppArmor (Debian/Ubuntu): libvirt's per-guest profiles (virt-aa-helper) grant each guest
  its own disks, so by default nothing is added. ``libvirt:apparmor_pool_access: true`` adds
  a marked block to libvirt's global QEMU abstraction that lets every guest reach every file
  under the pool paths (one guest could then read another's disks); false removes it again.
- SELinux (EL): the pool paths carry virt_image_t (persistently with ``semanage fcontext``,
  now with ``restorecon`` wherever a label differs) and ``virt_use_nfs`` is on when the
  secondary pool is on NFS. The tools are installed first when SELinux is enabled.
Each does nothing where its MAC system is inactive.
"""
import os

__virtualname__ = "kvmcluster_security"

BEGIN = "# BEGIN kvmcluster (pool paths from pillar kvmcluster:storage)"
END = "# END kvmcluster"
FCONTEXT_TYPE = "virt_image_t"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _pool_paths(view):
    paths = [view["storage"]["primary"]["path"]]
    sec = view["storage"]["secondary"]
    if sec.get("enabled"):
        paths.append(sec["mountpoint"])
    return paths


def _apparmor_active():
    try:
        with open("/sys/module/apparmor/parameters/enabled", encoding="utf-8") as fh:
            return fh.read().strip() == "Y" and os.path.isdir("/etc/apparmor.d")
    except OSError:
        return False


def _block(paths):
    # A quote or newline in a path would close the rule and open another (e.g. /**).
    __utils__["kvmcluster_safe.check"]("AppArmor abstraction", "path", {"pool paths": paths})
    rules = []
    for p in paths:
        rules += [f'  "{p}/" r,', f'  "{p}/**" rwk,']
    return "\n".join([BEGIN, *rules, END])


def _with_block(text, new_block):
    """``text`` with its kvmcluster block replaced by ``new_block`` (None: removed)."""
    lines = (text or "").splitlines()
    if BEGIN in lines and END in lines[lines.index(BEGIN):]:
        start = lines.index(BEGIN)
        end = lines.index(END, start)
        lines[start:end + 1] = new_block.splitlines() if new_block else []
    elif new_block:
        lines += new_block.splitlines()
    return "\n".join(lines) + "\n" if lines else ""


def apparmor_paths(name, path):
    """
    Where AppArmor is active, libvirt's global QEMU abstraction ``path`` holds the pool-wide
    rule only when ``libvirt:apparmor_pool_access`` is true (a marked block; the rest of the
    file is the admin's). By default the block is absent: each guest's own profile grants it
    its own disks.

    name
        Any; reported back.
    path
        /etc/apparmor.d/local/abstractions/libvirt-qemu
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    st = _skeleton().converge
    if not _apparmor_active():
        return _skeleton().ret(
            name, comment="AppArmor is not active on this node; nothing to do")
    view = __salt__["kvmcluster_model.current"]()
    broad = view["libvirt"]["apparmor_pool_access"]
    cur = __salt__["kvmcluster_node.file_text"](path)
    new = _with_block(cur, _block(_pool_paths(view)) if broad else None)
    if cur is None and not broad:
        new = None  # nothing to remove from a file that is not there

    def diff():
        return {} if cur == new else {path: {"old": cur, "new": new}}

    def apply(_changes):
        __salt__["kvmcluster_node.write_file"](path, new)

    def verify():
        return [] if __salt__["kvmcluster_node.file_text"](path) == new else [path]

    what = "allows every guest the pool paths (libvirt:apparmor_pool_access)" if broad \
        else "has no pool-wide rule: per-guest profiles grant each guest its own disks"
    return st(name, __opts__["test"], diff, apply, verify, ok=f"{path} {what}",
              planned=f"{path} would be changed: {what}",
              done=f"{path} written: {what}; guests started from now on follow it")


def _run(*argv):
    return __salt__["cmd.run_all"](list(argv), python_shell=False, ignore_retcode=True)


def _selinux_mode():
    """enforcing, permissive or disabled (no SELinux tools at all: disabled)."""
    try:
        with open("/sys/fs/selinux/enforce", encoding="utf-8") as fh:
            return "enforcing" if fh.read().strip() == "1" else "permissive"
    except OSError:
        return "disabled"


def _fcontext_rules():
    """{spec: type} of the local fcontext rules (``semanage fcontext --list -C``)."""
    rules = {}
    for line in _run("semanage", "fcontext", "--list", "-C")["stdout"].splitlines():
        f = line.split()
        # "/data01/primary(/.*)?   all files   system_u:object_r:virt_image_t:s0"
        if len(f) >= 2 and f[0].startswith("/") and ":" in f[-1]:
            parts = f[-1].split(":")
            rules[f[0]] = parts[2] if len(parts) > 2 else f[-1]
    return rules


def _labelled_here(path):
    """Whether files under ``path`` carry their own labels: not on an NFS mount (without
    labelled NFS every file there is nfs_t, which virt_use_nfs opens to the guests)."""
    mount = __salt__["kvmcluster_nfs.mount_of"](path)
    return not (mount and str(mount.get("fstype", "")).startswith("nfs"))


def _relabel_needed(path):
    """Paths under ``path`` whose label differs from policy (``restorecon -n -v``)."""
    if not os.path.exists(path) or not _labelled_here(path):
        return []
    out = _run("restorecon", "-R", "-n", "-v", path)["stdout"]
    return [ln.split()[1] for ln in out.splitlines() if ln.startswith("Would relabel")
            or ln.startswith("Relabeled")]


def selinux_contexts(name, packages=(), role=None):
    """
    Where SELinux is enabled: ``packages`` (the OS's package with ``semanage``) installed,
    the pool paths with a virt_image_t fcontext rule, files under them labelled as the
    policy says (``restorecon`` whenever a label differs, not only when the rule is new), and
    ``virt_use_nfs`` on when the secondary pool is on NFS.

    name
        Any; reported back.
    packages
        map.jinja ``pkgs:selinux``.
    role
        ``primary`` or ``secondary``: that pool's path only (the primary's before its pool
        and apart from the share, the secondary's once the share is mounted); None: both.
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    st = _skeleton().converge
    mode = _selinux_mode()
    if mode == "disabled":
        return _skeleton().ret(
            name, comment="SELinux is not enabled on this node; nothing to do")
    view = __salt__["kvmcluster_model.current"]()
    paths = _pool_paths(view)
    if role == "primary":
        paths = paths[:1]
    elif role == "secondary":
        paths = paths[1:]
    sec = view["storage"]["secondary"]
    want_nfs = bool(sec.get("enabled")) and sec.get("type", "nfs") == "nfs" and \
        role != "primary"
    test = __opts__["test"]

    def diff():
        changes = {}
        pkgs = _skeleton().packages_diff(__salt__, list(packages), test)
        if pkgs:
            changes["packages"] = pkgs
        # Without semanage yet (fresh node under test), every rule is still to be added.
        rules = _fcontext_rules() if not pkgs else {}
        for p in paths:
            spec = __utils__["kvmcluster_safe.fcontext_spec"](p)
            if rules.get(spec) != FCONTEXT_TYPE:
                changes[f"fcontext:{spec}"] = {"old": rules.get(spec), "new": FCONTEXT_TYPE}
            elif _relabel_needed(p):
                changes[f"labels:{p}"] = {"old": "differ from policy", "new": FCONTEXT_TYPE}
        if want_nfs:
            cur = _run("getsebool", "virt_use_nfs")["stdout"]
            if "--> on" not in cur:
                changes["virt_use_nfs"] = {"old": "off", "new": "on"}
        return changes

    def apply(changes):
        if "packages" in changes:
            _skeleton().packages_install(__salt__, changes["packages"])
        for key in changes:
            if key.startswith("fcontext:"):
                spec = key[len("fcontext:"):]
                verb = "-m" if changes[key]["old"] else "-a"
                res = _run("semanage", "fcontext", verb, "-t", FCONTEXT_TYPE, spec)
                if res["retcode"] != 0:
                    raise _skeleton().Refused(
                        f"semanage fcontext {spec}: {res['stderr'].strip()}")
        for p in paths:
            if os.path.exists(p) and _labelled_here(p):
                _run("restorecon", "-R", p)
        if "virt_use_nfs" in changes:
            res = _run("setsebool", "-P", "virt_use_nfs", "1")
            if res["retcode"] != 0:
                raise _skeleton().Refused(
                    f"setsebool virt_use_nfs: {res['stderr'].strip()}")

    def verify():
        left = diff()
        left.pop("packages", None)
        return left

    return st(name, test, diff, apply, verify,
              ok=f"SELinux ({mode}): pool paths labelled {FCONTEXT_TYPE}",
              planned=f"SELinux ({mode}) settings would change",
              done=f"SELinux ({mode}) settings applied")
