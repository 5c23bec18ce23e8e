"""
State for the node's kernel tuning: one drop-in under /etc/sysctl.d (never sysctl.conf),
applied live, with br_netfilter loaded (and loaded at boot) when net.bridge.* keys are set.
"""
import os

__virtualname__ = "kvmcluster_sysctl"

MODULES_LOAD = "/etc/modules-load.d/kvmcluster.conf"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _proc_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def _live(key):
    try:
        with open(_proc_path(key), encoding="utf-8") as fh:
            return " ".join(fh.read().split())
    except OSError:
        return None


def _render(settings):
    """The drop-in's text for ``settings`` (keys sorted; null values are not managed)."""
    __utils__["kvmcluster_safe.check"]("sysctl drop-in", "sysctl_key", {"keys": list(settings)})
    __utils__["kvmcluster_safe.check"]("sysctl drop-in", "sysctl", {
        "values": [str(v) for v in settings.values() if v is not None]})
    lines = ["# Managed by kvmcluster (pillar kvmcluster:sysctl). Local edits are replaced."]
    for key in sorted(settings):
        if settings[key] is not None:
            lines.append(f"{key} = {settings[key]}")
    return "\n".join(lines) + "\n"


def _module_available(module):
    """Whether modprobe finds ``module`` (dry run: nothing is loaded)."""
    res = __salt__["cmd.run_all"](["modprobe", "-n", module], python_shell=False,
                                  ignore_retcode=True)
    return res["retcode"] == 0


def _br_netfilter_ready():
    return os.path.isdir("/proc/sys/net/bridge")


def dropin_managed(name, path):
    """
    ``path`` holds the model's ``sysctl`` settings and every one of them is live. When
    net.bridge.* keys are set, br_netfilter is loaded now and at boot; where the kernel has
    no br_netfilter, bridged traffic does not pass the host firewall anyway and those keys
    are reported, not failed.

    name
        Any; reported back.
    path
        The drop-in, e.g. /etc/sysctl.d/60-kvmcluster.conf.
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    settings = {k: v for k, v in __salt__["kvmcluster_model.current"]()["sysctl"].items()
                if v is not None}
    text = _render(settings)
    changes = {}
    cur_text = __salt__["kvmcluster_node.file_text"](path)
    if cur_text != text:
        changes[path] = {"old": cur_text, "new": text}
    bridge_keys = [k for k in settings if k.startswith("net.bridge.")]
    notes = []
    if bridge_keys:
        mod_text = "# Managed by kvmcluster: net.bridge.* sysctl keys need it.\nbr_netfilter\n"
        if __salt__["kvmcluster_node.file_text"](MODULES_LOAD) != mod_text:
            changes[MODULES_LOAD] = {"old": __salt__["kvmcluster_node.file_text"](MODULES_LOAD),
                                     "new": mod_text}
    live_diff = {}
    for key, value in settings.items():
        cur = _live(key)
        want = " ".join(str(value).split())
        if cur is None:
            if key.startswith("net.bridge."):
                continue  # decided after trying to load br_netfilter
            ret.update(result=False, comment=f"sysctl {key} does not exist on this kernel "
                       "(kvmcluster:sysctl); remove it or set it to null")
            return ret
        if cur != want:
            live_diff[key] = {"old": cur, "new": want}
    need_module = bridge_keys and not _br_netfilter_ready()
    if need_module and _module_available("br_netfilter"):
        # Predicted only where it can be loaded: the real run reports it the same way.
        live_diff["br_netfilter"] = {"old": "not loaded", "new": "loaded"}
    changes.update({f"live:{k}": v for k, v in live_diff.items()})
    if not changes:
        ret["comment"] = f"{path}: {len(settings)} key(s) set and live"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{len(changes)} change(s) would be made")
        return ret
    if cur_text != text:
        __salt__["kvmcluster_node.write_file"](path, text)
    if MODULES_LOAD in changes:
        __salt__["kvmcluster_node.write_file"](MODULES_LOAD, changes[MODULES_LOAD]["new"])
    if "live:br_netfilter" in changes:
        res = __salt__["cmd.run_all"](["modprobe", "br_netfilter"], python_shell=False,
                                      ignore_retcode=True)
        if res["retcode"] != 0 or not _br_netfilter_ready():
            ret.update(result=False, changes=changes, comment="br_netfilter was found but "
                       f"does not load: {res['stderr'].strip()}")
            return ret
    elif need_module:
        notes.append("br_netfilter cannot be loaded on this kernel: net.bridge.* keys are "
                     "moot here (bridged traffic bypasses the host firewall)")
    failed = []
    for key, value in settings.items():
        if _live(key) is None and key.startswith("net.bridge."):
            continue
        res = __salt__["cmd.run_all"](["sysctl", "-w", f"{key}={value}"], python_shell=False,
                                      ignore_retcode=True)
        if res["retcode"] != 0 or _live(key) != " ".join(str(value).split()):
            failed.append(f"{key}: {res['stderr'].strip() or 'value did not stick'}")
    ret["changes"] = changes
    if failed:
        ret.update(result=False, comment="could not set live: " + "; ".join(failed))
        return ret
    ret["comment"] = "; ".join([f"{path} written and applied"] + notes)
    return ret
