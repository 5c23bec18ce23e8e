"""
Preflight: can this node be a KVM host of the cluster? Checks, changes nothing.

Each failed check is a reason in the comment; ``preflight:*`` strictness in the model turns
the hardware-virtualization and storage checks into warnings (for nested or lab setups).
"""
import os

__virtualname__ = "kvmcluster_preflight"

SUPPORTED = {
    "Debian": {"Debian": ["12"], "Ubuntu": ["22.04", "24.04"]},
    "RedHat": {"RedHat": ["8", "9"], "Rocky": ["8", "9"], "AlmaLinux": ["8", "9"],
               "CentOS Stream": ["9"]},
}


def __virtual__():
    return __virtualname__


def _mountpoint(path, mountinfo="/proc/self/mountinfo"):
    """The mount point that holds ``path`` (which need not exist yet)."""
    points = []
    with open(mountinfo, encoding="utf-8") as fh:
        for line in fh:
            points.append(line.split()[4].replace("\\040", " "))
    path = os.path.normpath(path)
    best = "/"
    for p in points:
        if (path == p or path.startswith(p.rstrip("/") + "/")) and len(p) > len(best):
            best = p
    return best


def _existing_ancestor(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _checks(view):
    """(failures, warnings, facts) for this node against the model's view."""
    fails, warns, facts = [], [], {}
    pf = view["preflight"]

    def problem(kind, msg):
        (warns if pf.get(kind) == "warn" else fails).append(msg)

    family, osname = __grains__.get("os_family"), __grains__.get("os")
    release = str(__grains__.get("osrelease", ""))
    major = str(__grains__.get("osmajorrelease", ""))
    facts["os"] = f"{osname} {release}"
    if family not in SUPPORTED:
        fails.append(f"OS family {family} ({osname} {release}) is not supported: "
                     "Debian/Ubuntu or RHEL/Rocky/Alma")
    elif not any(v in (release, major) for v in SUPPORTED[family].get(osname, [])):
        warns.append(f"{osname} {release} is not a tested release "
                     f"({'; '.join(f'{k} {v}' for k, v in SUPPORTED[family].items())})")
    if not __salt__["kvmcluster_node.systemd_running"]():
        fails.append("systemd is not running as init: services cannot be managed or trusted")
    facts["roles"] = ",".join(view["self"].get("roles") or []) or "hypervisor"
    if not view["self"].get("hypervisor", True):
        # A management node runs no guests and keeps no pools: no KVM or storage checks.
        other = _other_firewall(view)
        if other:
            warns.append(other)
        return fails, warns, facts

    flags = __salt__["kvmcluster_node.cpu_flags"]()
    facts["cpu_flags"] = flags
    if not flags:
        problem("hardware_virtualization", "the CPU advertises no vmx or svm flag: enable "
                "VT-x/AMD-V in the firmware (or nested virtualization)")
    kvm = __salt__["kvmcluster_node.kvm_device"]()
    facts["kvm_device"] = kvm["reason"]
    if not kvm["usable"]:
        problem("hardware_virtualization", f"/dev/kvm is not usable ({kvm['reason']}): load "
                "kvm_intel or kvm_amd")

    path = view["storage"]["primary"]["path"]
    mp = _mountpoint(path)
    facts["primary_mount"] = mp
    if mp == "/":
        problem("storage_mounted", f"primary storage {path} is on the root filesystem, not on a "
                "mounted data volume: mount it (e.g. /data01) at the same path on every node")
    anc = _existing_ancestor(path)
    st = os.statvfs(anc)
    free_gb = st.f_bavail * st.f_frsize / 2**30
    facts["primary_free_gb"] = round(free_gb, 1)
    need = view["storage"]["primary"]["min_free_gb"]
    if free_gb < need:
        problem("storage_mounted", f"primary storage {path} has {free_gb:.1f} GiB free, "
                f"less than storage:primary:min_free_gb ({need})")
    me = view["self"]
    if view["network"].get("manage", True) and me.get("port"):
        # A NIC that is not here would stop the bridge takeover late: say so before anything.
        port = me["port"]
        nics = port["slaves"] if port["kind"] == "bond" else [port["name"]]
        present = set(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else set()
        missing = [n for n in nics if n not in present]
        if present and missing:
            key = f"kvmcluster:nodes:{me['name']}:" + ("bond:slaves" if port["kind"] == "bond"
                                                        else "nic")
            fails.append(f"{key}: {', '.join(missing)} not found on this node (interfaces "
                         f"here: {', '.join(sorted(present - {'lo'}))})")
    other = _other_firewall(view)
    if other:
        warns.append(other)
    return fails, warns, facts


# What each firewalld service of the formula opens, for sites with another firewall.
PORTS = {"dns": "53/tcp+udp", "dhcp": "67/udp", "nfs": "2049/tcp", "rpc-bind": "111/tcp+udp", "mountd": "20048/tcp+udp",
         "libvirt-tls": "16514/tcp"}


def _other_firewall(view):
    """A warning naming the ports when ufw or nftables (not firewalld) guard this node."""
    if not view["firewall"]["manage"] or __salt__["kvmcluster_firewall.running"]():
        return None
    active = [u for u in ("ufw.service", "nftables.service")
              if __salt__["kvmcluster_node.unit_state"](u).get("active")]
    if not active:
        return None
    rules = __salt__["kvmcluster_firewall.wanted"](view)
    if not rules:
        return None
    opens = sorted({(PORTS.get(r.split('name="')[1].split('"')[0]) if 'service name="' in r
                     else r.split('port="')[1].split('"')[0] + "/tcp")
                    + " from " + (r.split('address="')[1].split('"')[0]
                                  if 'address="' in r else "anywhere") for r in rules})
    return (f"{', '.join(active)} runs, not firewalld: kvmcluster manages firewalld only; open "
            f"these yourself: {'; '.join(opens)}")


def checked(name):
    """
    Fail with every reason this node cannot be a KVM host of the cluster: OS family and
    release, systemd, vmx/svm and /dev/kvm, the primary storage path on a mounted volume with
    enough free space. Changes nothing, so test=True gives the same verdict.

    name
        Any; reported back.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        view = __salt__["kvmcluster_model.current"]()
        fails, warns, facts = _checks(view)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=f"preflight could not run: {exc}")
        return ret
    node = view["self"]["name"]
    lines = [f"preflight of {node}: " + ", ".join(f"{k}={v}" for k, v in facts.items())]
    lines += [f"FAIL: {m}" for m in fails] + [f"WARN: {m}" for m in warns]
    ret["comment"] = "\n".join(lines)
    ret["result"] = not fails
    if warns:
        # Salt's outputter prints a "Warnings:" header for the key even when the list is
        # empty: only real warnings get one.
        ret["warnings"] = warns
    return ret
