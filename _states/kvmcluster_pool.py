"""
State for the libvirt storage pools of the cluster model (the primary pool for now).

Compares the desired pool with the pool's actual definition and state, reports drift as
changes, honours test=True with the same changes, applies, then re-reads and verifies.
"""
import os

__virtualname__ = "kvmcluster_pool"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _desired(role):
    """The pool the model wants for ``role``, or None when it wants none."""
    view = __salt__["kvmcluster_model.current"]()
    if role == "primary":
        pri = view["storage"]["primary"]
        return {"name": pri["name"], "type": "dir", "target": pri["path"], "source": None}
    if role == "secondary":
        sec = view["storage"]["secondary"]
        if not sec["enabled"]:
            return None
        server = view["nodes"][sec["server"]] if sec.get("server") else None
        pool = {"name": sec["pool"]["name"], "type": "dir", "target": sec["mountpoint"],
                "source": None, "mounted": True}
        # The server has the export bind-mounted at the mountpoint: a dir pool there.
        if server and sec["pool"]["type"] == "netfs" and view["self"]["name"] != server["name"]:
            pool.update(type="netfs", source={"host": sec["address"], "dir": sec["export_path"],
                                              "format": "nfs"})
        return pool
    raise ValueError(f"unknown pool role {role!r}")


def _diff(want, cur):
    changes = {}
    if not cur["exists"]:
        changes["defined"] = {"old": None, "new": {k: want[k] for k in ("type", "target")}}
    else:
        for key in ("type", "target", "source"):
            if cur.get(key) != want[key]:
                changes[key] = {"old": cur.get(key), "new": want[key]}
    # The secondary storage's mountpoint is made by the mount state before this one runs:
    # only the primary pool's directory is this state's to build (and to predict).
    if want["type"] == "dir" and not want.get("mounted") and not os.path.isdir(want["target"]):
        changes["built"] = {"old": False, "new": True}
    if not cur.get("active"):
        changes["active"] = {"old": bool(cur.get("active")), "new": True}
    if not cur.get("autostart"):
        changes["autostart"] = {"old": bool(cur.get("autostart")), "new": True}
    return changes


def present(name, role="primary", uri="qemu:///system"):
    """
    The pool of ``role`` in the cluster model is defined as the model says, built, active
    and autostarted on this node.

    name
        The state's name (the pool name comes from the model).
    role
        Which pool of the model: ``primary``, or ``secondary`` (``storage:secondary:pool``:
        a netfs pool of the NFS export, or a dir pool over the managed mount; on the NFS
        server always a dir pool over its bind mount).
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        want = _desired(role)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc))
        return ret
    if want is None:
        ret["comment"] = f"the model has no {role} pool"
        return ret
    try:
        cur = __salt__["kvmcluster_pool.describe"](want["name"], uri=uri)
    except Exception as exc:  # pylint: disable=broad-except
        if not __opts__["test"]:
            ret.update(result=False, comment=str(exc))
            return ret
        # Under test on a fresh node libvirt is not installed yet: predict from nothing.
        cur = {"exists": False}
    label = f"pool {want['name']} ({want['type']} at {want['target']})"
    changes = _diff(want, cur)
    if not changes:
        ret["comment"] = f"{label} is defined, active and autostarted"
        return ret
    drift = [k for k in ("type", "target", "source") if k in changes]
    if __opts__["test"]:
        ret.update(result=None, changes=changes,
                   comment=f"{label} would be changed"
                   + (f"; drift from the model in {', '.join(drift)}" if drift else ""))
        return ret
    try:
        steps = __salt__["kvmcluster_pool.ensure"](want["name"], want["target"], want["type"],
                                                  want["source"], uri=uri)
        after = __salt__["kvmcluster_pool.describe"](want["name"], uri=uri)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc))
        return ret
    left = _diff(want, after)
    if left:
        ret.update(result=False, changes=changes,
                   comment=f"{label}: still differs after {', '.join(steps)}: {left}")
        return ret
    ret.update(changes=changes, comment=f"{label}: {', '.join(steps)}"
               + (f" (corrected drift in {', '.join(drift)})" if drift else ""))
    return ret
