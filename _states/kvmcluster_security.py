"""
States that let QEMU reach the cluster's pool paths under the node's MAC system:
AppArmor (Debian/Ubuntu) through libvirt's local abstraction, SELinux (EL) through file
contexts and the virt_use_nfs boolean. Each does nothing where its MAC system is inactive.
"""
import os

__virtualname__ = "kvmcluster_security"

BEGIN = "# BEGIN kvmcluster (pool paths from pillar kvmcluster:storage)"
END = "# END kvmcluster"


def __virtual__():
    return __virtualname__


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


def block(paths):
    """The managed block of AppArmor rules for ``paths``."""
    rules = []
    for p in paths:
        rules += [f'  "{p}/" r,', f'  "{p}/**" rwk,']
    return "\n".join([BEGIN, *rules, END])


def with_block(text, new_block):
    """``text`` with its kvmcluster block replaced by ``new_block`` (or appended)."""
    lines = (text or "").splitlines()
    if BEGIN in lines and END in lines[lines.index(BEGIN):]:
        start = lines.index(BEGIN)
        end = lines.index(END, start)
        lines[start:end + 1] = new_block.splitlines()
    else:
        lines += new_block.splitlines()
    return "\n".join(lines) + "\n"


def apparmor_paths(name, path):
    """
    Where AppArmor is active, libvirt's local abstraction ``path`` lets QEMU read and write
    the pool paths (a marked block; the rest of the file is the admin's).

    name
        Any; reported back.
    path
        /etc/apparmor.d/local/abstractions/libvirt-qemu
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    if not _apparmor_active():
        ret["comment"] = "AppArmor is not active on this node; nothing to do"
        return ret
    view = __salt__["kvmcluster_model.current"]()
    cur = __salt__["kvmcluster_node.file_text"](path)
    new = with_block(cur, block(_pool_paths(view)))
    if cur == new:
        ret["comment"] = f"{path} allows the pool paths"
        return ret
    ret["changes"] = {path: {"old": cur, "new": new}}
    if __opts__["test"]:
        ret.update(result=None, comment=f"{path} would be changed")
        return ret
    __salt__["kvmcluster_node.write_file"](path, new)
    ok = __salt__["kvmcluster_node.file_text"](path) == new
    ret.update(result=ok, comment=f"{path} written; new guest profiles include it"
               if ok else f"{path} did not take the new text")
    return ret


def _run(*argv):
    return __salt__["cmd.run_all"](list(argv), python_shell=False, ignore_retcode=True)


def selinux_contexts(name):
    """
    Where SELinux is enforcing, the pool paths carry virt_image_t (persistently, via
    semanage fcontext, and now, via restorecon) and virt_use_nfs is on when the secondary
    pool is on NFS.

    name
        Any; reported back.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    mode = _run("getenforce") if __salt__["cmd.has_exec"]("getenforce") else None
    if not mode or mode["retcode"] != 0 or mode["stdout"].strip() != "Enforcing":
        ret["comment"] = "SELinux is not enforcing on this node; nothing to do"
        return ret
    view = __salt__["kvmcluster_model.current"]()
    listed = _run("semanage", "fcontext", "--list", "-C")["stdout"]
    plan = {}
    for p in _pool_paths(view):
        spec = f"{p}(/.*)?"
        if not any(line.split()[0] == spec and "virt_image_t" in line
                   for line in listed.splitlines() if line.strip()):
            plan[spec] = {"old": None, "new": "virt_image_t"}
    if view["storage"]["secondary"].get("enabled"):
        if "--> on" not in _run("getsebool", "virt_use_nfs")["stdout"]:
            plan["virt_use_nfs"] = {"old": "off", "new": "on"}
    if not plan:
        ret["comment"] = "pool paths labelled virt_image_t"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=plan, comment="SELinux settings would change")
        return ret
    errors = []
    for spec in [s for s in plan if s != "virt_use_nfs"]:
        res = _run("semanage", "fcontext", "-a", "-t", "virt_image_t", spec)
        path = spec[: -len("(/.*)?")]
        if res["retcode"] != 0:
            errors.append(res["stderr"])
        elif os.path.exists(path):
            _run("restorecon", "-R", path)
    if "virt_use_nfs" in plan:
        res = _run("setsebool", "-P", "virt_use_nfs", "1")
        if res["retcode"] != 0:
            errors.append(res["stderr"])
    ret.update(changes=plan, result=not errors,
               comment="; ".join(errors) if errors else "SELinux settings applied")
    return ret
