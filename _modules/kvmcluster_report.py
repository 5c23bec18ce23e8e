"""
One node's facts for the cluster view (``salt-run kvmcluster.status``), read from the host
and from libvirt through its Python binding, compared with what the model says.

Every probe is bounded: a share whose server is gone must not hang the report (its
filesystem calls run in a child process with a timeout). A probe that fails says why in
its own field; the report itself never raises.
"""
import json
import os
import pwd
import subprocess
import time
import xml.etree.ElementTree as ET

__virtualname__ = "kvmcluster_report"

PROBE_TIMEOUT = 5


def __virtual__():
    return __virtualname__


def _run(argv, timeout=PROBE_TIMEOUT, stdin=None):
    """(returncode, stdout, stderr); returncode None when it timed out or cannot run."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout}s"
    except OSError as exc:
        return None, "", str(exc)


def _sys(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


# ---- the bridge and its port ----------------------------------------------------------

def _slave(name, aggregator):
    base = f"/sys/class/net/{name}"
    out = {"name": name, "operstate": _sys(f"{base}/operstate"),
           "carrier": _sys(f"{base}/carrier") == "1"}
    agg = _sys(f"{base}/bonding_slave/ad_aggregator_id")
    if agg is not None:
        # In the bond's active aggregator: LACP agreed with the switch on this link.
        out["lacp_in_aggregator"] = aggregator is not None and agg == aggregator
        out["lacp_actor_state"] = _sys(f"{base}/bonding_slave/ad_actor_oper_port_state")
        out["lacp_partner_state"] = _sys(f"{base}/bonding_slave/ad_partner_oper_port_state")
    return out


def _port(name):
    base = f"/sys/class/net/{name}"
    out = {"name": name, "mtu": int(_sys(f"{base}/mtu") or 0), "operstate": _sys(
        f"{base}/operstate")}
    if os.path.isdir(f"{base}/bonding"):
        mode = (_sys(f"{base}/bonding/mode") or "").split()
        aggregator = _sys(f"{base}/bonding/ad_aggregator")
        out["kind"] = "bond"
        out["mode"] = mode[0] if mode else None
        out["partner_mac"] = _sys(f"{base}/bonding/ad_partner_mac")
        out["slaves"] = [_slave(s, aggregator)
                         for s in (_sys(f"{base}/bonding/slaves") or "").split()]
    else:
        out["kind"] = "nic"
    return out


def bridge(name):
    """
    The bridge ``name``: exists, up, MTU, addresses (IPv4 and IPv6, global) and its ports
    (a NIC, or a bond with its slaves' link and LACP state).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_report.bridge br0
    """
    base = f"/sys/class/net/{name}"
    if not os.path.isdir(f"{base}/bridge"):
        return {"name": name, "exists": False}
    rc, out, _ = _run(["ip", "-j", "address", "show", "dev", name])
    addrs = []
    if rc == 0:
        for link in json.loads(out or "[]"):
            addrs += [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                      if a.get("scope") == "global"]
    ports = sorted(os.listdir(f"{base}/brif")) if os.path.isdir(f"{base}/brif") else []
    # Guests' tap devices are ports too; the node's uplink is the one that is not a tap.
    uplinks = [p for p in ports if not os.path.exists(f"/sys/class/net/{p}/tun_flags")]
    return {"name": name, "exists": True, "operstate": _sys(f"{base}/operstate"),
            "mtu": int(_sys(f"{base}/mtu") or 0), "addresses": addrs,
            "ports": [_port(p) for p in uplinks]}


# ---- storage --------------------------------------------------------------------------

def _qemu_user():
    """The QEMU account's password entry (the one kvmcluster_volume finds), None without."""
    account = __utils__["kvmcluster_volume.qemu_account"]()
    return pwd.getpwnam(account["name"]) if account else None


def share(mountpoint, node=None, fstype_expected=None):
    """
    The shared storage at ``mountpoint``: mounted (and its filesystem type), and writable
    the way libvirt uses it: root creates a file and gives it to the QEMU account, which
    then writes it (root squashing or a read-only share fail here). Bounded in time.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_report.share /mnt/secondary
    """
    node = node or __grains__["id"]
    out = {"mountpoint": mountpoint, "mounted": False, "fstype": None, "writable": False}
    rc, text, err = _run(["findmnt", "-n", "-J", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS",
                          "--mountpoint", mountpoint])
    if rc is None:
        out["error"] = f"findmnt: {err}"
        return out
    if rc == 0 and text.strip():
        fs = json.loads(text)["filesystems"][0]
        out.update(mounted=True, fstype=fs["fstype"], source=fs["source"],
                   read_only="ro" in fs["options"].split(","))
    if fstype_expected and out["fstype"] and not out["fstype"].startswith(fstype_expected):
        out["error"] = f"{out['fstype']} filesystem, expected {fstype_expected}"
    user = _qemu_user()
    out["qemu_user"] = user.pw_name if user else None
    if not out["mounted"] or user is None:
        return out
    writable, error = _probe(mountpoint, user)
    out["writable"] = writable
    if error:
        out["error"] = error
    return out


# Root makes the probe under a name nobody can guess, never through a link (O_EXCL and
# O_NOFOLLOW: whoever writes to the share could plant one at a known name), and gives it
# to the QEMU account through its descriptor. In a child with a timeout: a hard NFS mount
# of a server that is gone blocks forever.
_PROBE_PY = """import os, secrets, sys
name = ".kvmcluster-probe-" + secrets.token_hex(8)
fd = os.open(os.path.join(sys.argv[1], name),
             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
os.fchown(fd, int(sys.argv[2]), int(sys.argv[3]))
os.close(fd)
print(name)
"""


def _probe(mountpoint, user):
    """(writable, error): root creates a file on the share and gives it to ``user`` (the
    QEMU account), which writes it, as libvirt works with a volume. The file is removed."""
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    rc, made, err = _run([py, "-c", _PROBE_PY, mountpoint, str(user.pw_uid),
                          str(user.pw_gid)])
    if rc != 0:
        return False, (f"root cannot create a file there and give it to {user.pw_name}: "
                       f"{err.strip().splitlines()[-1] if err.strip() else 'failed'}")
    probe = os.path.join(mountpoint, made.strip())
    rc, _, err = _run(["runuser", "-u", user.pw_name, "--", "dd", f"of={probe}",
                       "conv=notrunc,fsync", "status=none"], stdin="kvmcluster\n")
    # rm removes a link put in the file's place, never its target.
    _run(["rm", "-f", "--", probe])
    if rc != 0:
        return False, f"{user.pw_name} cannot write there: {err.strip() or 'failed'}"
    return True, None


# ---- libvirt --------------------------------------------------------------------------

def _version(number):
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def _pools(conn, view):
    libvirt = __utils__["kvmcluster_virt.binding"]()
    storage = view["storage"]
    want = {"primary": (storage["primary"]["name"], storage["primary"]["path"])}
    sec = storage["secondary"]
    if sec["enabled"]:
        want["secondary"] = (sec["pool"]["name"], sec["mountpoint"])
    out = {}
    for role, (name, path) in want.items():
        entry = {"name": name, "path_expected": path, "defined": False, "active": False}
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            out[role] = entry
            continue
        root = ET.fromstring(pool.XMLDesc(0))
        entry.update(defined=True, active=bool(pool.isActive()),
                     path=root.findtext("target/path"), autostart=bool(pool.autostart()))
        if entry["active"]:
            info = pool.info()
            entry.update(capacity=info[1], available=info[3])
        out[role] = entry
    return out


def _cpu(conn, domain_type):
    """The host CPU (vendor, model) and its full feature list, for comparisons across nodes."""
    libvirt = __utils__["kvmcluster_virt.binding"]()
    caps = ET.fromstring(conn.getCapabilities())
    cpu = caps.find("host/cpu")
    out = {"arch": caps.findtext("host/cpu/arch"), "vendor": cpu.findtext("vendor"),
           "model": cpu.findtext("model")}
    try:
        text = conn.baselineCPU([ET.tostring(cpu, encoding="unicode")],
                                libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
        base = ET.fromstring(text)
        out["features"] = sorted(f.get("name") for f in base.findall("feature")
                                 if f.get("policy") in (None, "require"))
    except libvirt.libvirtError as exc:
        out["features"] = None
        out["error"] = str(exc)
    out["domain_type"] = domain_type
    return out


def _libvirt_facts(view, uri):
    conn = __utils__["kvmcluster_virt.connect"](uri)
    try:
        out = {"libvirt_version": _version(conn.getLibVersion()),
               "qemu_version": _version(conn.getVersion()),
               "pools": _pools(conn, view), "cpu": _cpu(conn, view["vm"]["domain_type"])}
        running, defined = [], []
        for dom in conn.listAllDomains(0):
            (running if dom.isActive() else defined).append(dom.name())
        out["vms"] = {"running": sorted(running), "stopped": sorted(defined)}
        info = conn.getInfo()
        out["memory_mb"], out["cpus"] = info[1], info[2]
        return out
    finally:
        conn.close()


def _unit_active(unit):
    rc, out, _ = _run(["systemctl", "is-active", unit])
    return (out or "").strip() or ("unknown" if rc is None else "inactive")


def _ntp_synchronized():
    rc, out, _ = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    return None if rc != 0 else out.strip() == "yes"


def _guard(facts, key, fn, *args):
    """facts[key] = fn(*args), or the reason it failed (the report never raises)."""
    try:
        facts[key] = fn(*args)
    except Exception as exc:  # pylint: disable=broad-except
        facts[key] = {"error": str(exc) or type(exc).__name__}


def node(parameters=None, cluster=None, uri="qemu:///system"):
    """
    This node's facts for the cluster view: its model entry (bridge, MTU, pool paths, the
    VMs the model places here), the bridge and its port, libvirtd, the pools, the share
    (mounted, writable as QEMU's account), the VMs running and stopped, the host CPU,
    libvirt and QEMU versions, a pending network transaction, and its clock. Never raises:
    a probe that fails reports why. ``parameters`` (the formula's defaults) and
    ``cluster`` (the node's ``kvmcluster`` pillar): the runner sends them to nodes reached
    by salt-ssh, which have neither in a plain call.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_report.node
        salt-ssh '*' kvmcluster_report.node --out=json
    """
    me = __grains__["id"]
    facts = {"node": me, "os": f"{__grains__.get('os')} {__grains__.get('osrelease')}"}
    try:
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        if isinstance(cluster, str):
            cluster = json.loads(cluster)
        view = __salt__["kvmcluster_model.load"](parameters, cluster=cluster)
    except Exception as exc:  # pylint: disable=broad-except
        facts["model_error"] = str(exc)
        facts["time"] = time.time()
        return facts
    me_model = view["self"]
    br = me_model.get("bridge") or view["bridge"]
    port = me_model.get("port") or {}
    facts["model"] = {
        "ip": me_model.get("ip"), "ip6": me_model.get("ip6"),
        "hypervisor": me_model.get("hypervisor", True), "roles": me_model.get("roles", []),
        "bridge": br["name"] if me_model.get("takeover") else None,
        "mtu": br.get("mtu"), "port": port.get("name"), "port_kind": port.get("kind"),
        "slaves": port.get("slaves") or [],
        "primary_path": view["storage"]["primary"]["path"],
        "secondary": {k: view["storage"]["secondary"].get(k)
                      for k in ("enabled", "type", "mountpoint")},
        "vms": {n: vm["node"] for n, vm in (view.get("vms") or {}).items()},
        "vm_states": {n: vm["state"] for n, vm in (view.get("vms") or {}).items()},
        "migration_tls": {"plaintext": view["migration"]["plaintext"],
                          "renew_hours": view["migration"]["certificates"]["renew_hours"]}
        if view["migration"]["enabled"] else None,
    }
    if me_model.get("takeover"):
        _guard(facts, "bridge", bridge, br["name"])
    facts["libvirtd"] = _unit_active("libvirtd.service") if facts["model"]["hypervisor"] \
        else None
    if facts["model"]["hypervisor"]:
        _guard(facts, "libvirt", _libvirt_facts, view, uri)
        try:
            facts["migration_cert"] = __salt__["kvmcluster_pki.info"]()
        except Exception as exc:  # pylint: disable=broad-except
            facts["migration_cert"] = {"error": str(exc)[:300]}
        sec = view["storage"]["secondary"]
        if sec["enabled"]:
            fstype = "nfs" if sec.get("type", "nfs") == "nfs" else None
            _guard(facts, "share", share, sec["mountpoint"], me, fstype)
    try:
        facts["network_pending"] = __salt__["kvmcluster_nettxn.pending"](reap=False)
    except Exception as exc:  # pylint: disable=broad-except
        facts["network_pending"] = {"error": str(exc)}
    facts["ntp_synchronized"] = _ntp_synchronized()
    facts["time"] = time.time()
    return facts
