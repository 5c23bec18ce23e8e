"""
Live migration of a kvmcluster VM between nodes, through the libvirt Python binding.

The runner (``salt-run kvmcluster.migrate``) asks the source for the VM's ``plan``, the
target to ``check`` it (nothing moves unless every check passes), then the source to
``migrate`` it: peer-to-peer, live, persistent on the target and undefined on the source,
disks on the shared storage left where they are and node-local disks copied. Never with
libvirt's unsafe flag: where libvirt thinks the storage unsafe, the migration is refused.
"""
import os
import time
import xml.etree.ElementTree as ET

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_migration"

DEFAULT_URI = "qemu:///system"
CONFIG_DIR = "/etc/kvmcluster/migration"
KEY_FILE = f"{CONFIG_DIR}/id_ed25519"
KNOWN_HOSTS = f"{CONFIG_DIR}/known_hosts"
SSH_CONFIG = "/etc/ssh/ssh_config.d/60-kvmcluster-migration.conf"
GIB = 1 << 30


def __virtual__():
    return __virtualname__


def _libvirt():
    return __utils__["kvmcluster_virt.binding"]()


def _view(parameters=None, cluster=None):
    """This node's view of the model. ``parameters`` (the formula's defaults) and
    ``cluster`` (its ``kvmcluster`` pillar) as the runner sends them to a node reached by
    salt-ssh, which has neither a fileserver nor pillar in a plain call."""
    if parameters is None and cluster is None:
        try:
            return __salt__["kvmcluster_model.current"]()
        except CommandExecutionError:
            pass
    return __salt__["kvmcluster_model.load"](
        _as_dict(parameters, "parameters") if parameters is not None else None,
        cluster=_as_dict(cluster, "cluster") if cluster is not None else None)


def _as_dict(value, what):
    if isinstance(value, str):
        import json  # pylint: disable=import-outside-toplevel

        try:
            value = json.loads(value)
        except ValueError as exc:
            raise CommandExecutionError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CommandExecutionError(f"{what} must be a mapping")
    return value


# Filesystems libvirt knows to be shared (virFileIsSharedFS): only on these does it leave a
# disk in place during a migration; elsewhere it refuses ("unsafe"), and so does the check.
SHARED_FS = {"nfs", "nfs4", "gfs2", "gfs2meta", "ocfs2", "afs", "smb", "smb2", "smb3", "cifs",
             "ceph", "gpfs", "fuse.glusterfs", "fuse.quobyte", "acfs", "beegfs"}


def _fstype(path):
    """The type of the filesystem ``path`` is on, as the mount table names it."""
    import subprocess  # pylint: disable=import-outside-toplevel

    try:
        proc = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def _as_list(value):
    """A list argument, also as salt-ssh passes it (JSON text, or one bare item)."""
    if isinstance(value, str):
        import json  # pylint: disable=import-outside-toplevel

        return json.loads(value) if value.startswith("[") else [value]
    return list(value or [])


def _lookup(conn, name, view):
    """VM ``name`` on this node, or CommandExecutionError naming the node."""
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"VM {name} is not on {view['self']['name']}") from exc


def _under(path, directory):
    directory = directory.rstrip("/") + "/"
    return bool(path) and os.path.normpath(path).startswith(directory)


def target_uri(view, target):
    """The libvirt URI the source's libvirtd opens to ``target`` (a node of the model)."""
    node = view["nodes"].get(target)
    if node is None:
        raise CommandExecutionError(f"{target} is not a node of the model (kvmcluster:nodes)")
    mig = view["migration"]
    if mig["transport"] == "tls":
        return f"qemu+tls://{node['fqdn']}/system"
    user = view["account"]["name"]
    if not (user and mig["ssh"].get("private_key")):
        raise CommandExecutionError(
            "migration over SSH is not set up: kvmcluster:migration:ssh:private_key and "
            "public_key and kvmcluster:account:name are needed (or transport: tls)")
    # The SSH options (key, known hosts) come from the formula's ssh_config drop-in.
    return f"qemu+ssh://{user}@{node['ip']}/system"


def plan(name, parameters=None, cluster=None, uri=DEFAULT_URI):
    """
    What moving VM ``name`` off this node involves: its memory, vcpus, CPU definition,
    network, and disks (shared: on the secondary storage, seen by every node; otherwise
    copied) with their sizes and backing files.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_migration.plan web1
    """
    libvirt = _libvirt()
    view = _view(parameters, cluster)
    sec = view["storage"]["secondary"]
    shared_dir = sec["mountpoint"] if sec["enabled"] else None
    conn = __utils__["kvmcluster_virt.connect"](uri)
    try:
        dom = _lookup(conn, name, view)
        root = ET.fromstring(dom.XMLDesc(0))
        cpu = root.find("cpu")
        # As defined: what the VM boots with on its next start, on whichever node it is.
        defined = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("cpu")
        info = dom.info()
        disks = []
        for d in root.findall("devices/disk"):
            if d.get("device") != "disk" or d.find("source") is None:
                continue
            path = d.find("source").get("file") or d.find("source").get("dev")
            chain = [b for b in d.iter("backingStore")
                     if b.find("source") is not None and b.find("source").get("file")]
            backing = [b.find("source").get("file") for b in chain]
            backing_format = chain[0].find("format").get("type") \
                if chain and chain[0].find("format") is not None else None
            try:
                cap, alloc = dom.blockInfo(path)[:2]
            except libvirt.libvirtError:
                cap = alloc = None
            disks.append({"target": d.find("target").get("dev"), "path": path,
                          "format": (d.find("driver").get("type")
                                     if d.find("driver") is not None else "raw"),
                          "capacity": cap, "allocation": alloc, "backing": backing,
                          "backing_format": backing_format,
                          "shared": bool(shared_dir) and _under(path, shared_dir)})
        nic = root.find("devices/interface/source")
        return {
            "name": name, "node": view["self"]["name"], "active": bool(dom.isActive()),
            "domain_type": root.get("type"), "arch": root.find("os/type").get("arch"),
            "machine": root.find("os/type").get("machine"),
            "memory_mb": info[1] // 1024, "vcpus": info[3],
            "cpu_xml": ET.tostring(cpu, encoding="unicode") if cpu is not None else None,
            "cpu_xml_defined": ET.tostring(defined, encoding="unicode")
                               if defined is not None else None,
            "network": nic.get("network") if nic is not None else None,
            "bridge": nic.get("bridge") if nic is not None else None,
            "disks": disks,
        }
    finally:
        conn.close()


def _capacity_reasons(conn, view, vm):
    limits = view["vm"]
    info = conn.getInfo()
    committed = {"memory_mb": 0, "vcpus": 0}
    for dom in conn.listAllDomains(0):
        if dom.isActive():
            i = dom.info()
            committed["memory_mb"] += i[1] // 1024
            committed["vcpus"] += i[3]
    mem_limit = info[1] - limits["memory_reserve_mb"]
    cpu_limit = info[2] * limits["vcpu_ratio"]
    why = []
    if committed["memory_mb"] + vm["memory_mb"] > mem_limit:
        why.append(f"memory: {committed['memory_mb']} MiB committed + {vm['memory_mb']} MiB "
                   f"> {mem_limit} MiB ({info[1]} MiB minus the reserve "
                   f"{limits['memory_reserve_mb']} MiB, kvmcluster:vm:memory_reserve_mb)")
    if committed["vcpus"] + vm["vcpus"] > cpu_limit:
        why.append(f"vcpus: {committed['vcpus']} committed + {vm['vcpus']} > {cpu_limit:g} "
                   f"({info[2]} CPUs x kvmcluster:vm:vcpu_ratio {limits['vcpu_ratio']})")
    return why


def _cpu_reasons(conn, vm, me):
    """Why this node's hypervisor cannot run the VM's CPU as it runs now (live) or as it is
    defined (its next boot, here): libvirt's own comparison."""
    libvirt = _libvirt()
    out = []
    for key, what in (("cpu_xml", "it runs with"), ("cpu_xml_defined", "it is defined with")):
        if not vm.get(key):
            continue
        cpu = ET.fromstring(vm[key])
        if cpu.get("mode") in ("host-passthrough", "maximum"):
            return [f"its CPU is {cpu.get('mode')}: the guest sees the source's exact CPU, "
                    "which no other node can promise; use host-model or a named model"]
        if cpu.find("model") is None:
            continue
        try:
            res = conn.compareHypervisorCPU(None, vm.get("arch"), vm.get("machine"),
                                            vm.get("domain_type"), vm[key], 0)
        except libvirt.libvirtError as exc:
            out.append(f"the CPU {what} ({cpu.findtext('model')}): "
                       f"{exc.get_error_message()}")
            continue
        if res == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            out.append(f"the CPU model {what}, {cpu.findtext('model')} (and its features), is "
                       f"not available to {vm.get('domain_type')} guests on {me}")
    return out


def check(vm_plan, parameters=None, cluster=None, uri=DEFAULT_URI):
    """
    Whether this node can take the VM of ``vm_plan`` (from ``plan`` on the source): not
    defined here already, capacity (memory with the reserve, vcpus), the same bridge or
    libvirt network, a CPU the hypervisor here can give it, each shared disk visible at
    the same path, and for each disk to copy the primary pool at its directory, room for it
    and its backing files. Returns ``{"ok", "reasons", "copy"}``; changes nothing.

    CLI Example:

    .. code-block:: bash

        salt kvm02 kvmcluster_migration.check "$(salt kvm01 kvmcluster_migration.plan web1 --out=json)"
    """
    libvirt = _libvirt()
    vm = _as_dict(vm_plan, "vm_plan")
    view = _view(parameters, cluster)
    me = view["self"]["name"]
    reasons, copy = [], []
    if not view["self"].get("hypervisor", True):
        return {"ok": False, "reasons": [f"{me} is not a hypervisor (roles)"], "copy": []}
    conn = __utils__["kvmcluster_virt.connect"](uri)
    try:
        try:
            conn.lookupByName(vm["name"])
            reasons.append(f"a VM named {vm['name']} is already defined on {me}")
        except libvirt.libvirtError:
            pass
        reasons += _capacity_reasons(conn, view, vm)
        if vm.get("network"):
            try:
                if not conn.networkLookupByName(vm["network"]).isActive():
                    reasons.append(f"libvirt network {vm['network']} is not active on {me}")
            except libvirt.libvirtError:
                reasons.append(f"libvirt network {vm['network']} is not defined on {me}")
        if vm.get("bridge") and not os.path.isdir(f"/sys/class/net/{vm['bridge']}/bridge"):
            reasons.append(f"bridge {vm['bridge']} does not exist on {me}")
        reasons += _cpu_reasons(conn, vm, me)
        reasons += _migration_address_reasons(view["self"])
        primary = view["storage"]["primary"]
        need = 0
        for d in vm.get("disks") or []:
            if d.get("shared"):
                fstype = _fstype(d["path"])
                if not os.path.exists(d["path"]):
                    reasons.append(f"disk {d['target']} ({d['path']}) is on the shared storage "
                                   f"but {me} does not see it")
                elif fstype not in SHARED_FS:
                    reasons.append(
                        f"disk {d['target']} ({d['path']}) is on a {fstype} filesystem, which "
                        "libvirt does not know as shared (NFS, CephFS, GlusterFS, GFS2, OCFS2, "
                        "CIFS...): it refuses to leave it in place; such VMs need storage: "
                        "primary (copied when they move)")
                continue
            if os.path.dirname(d["path"]) != primary["path"].rstrip("/"):
                reasons.append(f"disk {d['target']} ({d['path']}) is neither on the shared "
                               f"storage nor in the primary pool ({primary['path']})")
                continue
            if os.path.exists(d["path"]):
                reasons.append(f"{d['path']} already exists on {me}: it would be overwritten")
            for b in d.get("backing") or []:
                if not os.path.exists(b):
                    reasons.append(f"backing file {b} of disk {d['target']} is not on {me}")
            copy.append(d["target"])
            need += d.get("allocation") or d.get("capacity") or 0
        if copy:
            try:
                pool = conn.storagePoolLookupByName(primary["name"])
                pool.refresh(0)
                free = pool.info()[3]
                if need > free:
                    reasons.append(f"primary pool on {me}: {free / GIB:.1f} GiB free, the disks "
                                   f"to copy take {need / GIB:.1f} GiB")
            except libvirt.libvirtError:
                reasons.append(f"primary pool {primary['name']} is not active on {me}")
        return {"ok": not reasons, "reasons": reasons, "copy": copy, "node": me}
    finally:
        conn.close()


def _migration_address_reasons(me):
    """With a migration network, the node's address there is on one of its interfaces:
    QEMU listens on it only."""
    mip = me.get("migration_ip")
    if mip and not __salt__["kvmcluster_node.local_address"](mip):
        return [f"migration_ip {mip} is on no interface of {me['name']}: configure it on "
                "the migration network's interface (kvmcluster:networks:migration)"]
    return []


def data_address(node):
    """Where a migration's stream (and a disk copy's NBD) goes to ``node``: its address on
    the migration network when the model has one, else its node address."""
    return node.get("migration_ip") or node["ip"]


def _vol_xml(name, capacity, fmt, backing=None, backing_format=None):
    owner = __utils__["kvmcluster_volume.owner"]()
    return __utils__["kvmcluster_volume.xml"](name, capacity, fmt, backing, backing_format,
                                              owner=owner)


def prepare(vm_plan, copy, parameters=None, cluster=None, uri=DEFAULT_URI):
    """
    On the target, before a migration: the disks to copy (``copy``: their targets, e.g.
    ``vda``) made empty in the primary pool, of the same size and format, on the same
    backing file (a linked clone's golden image on the shared storage): QEMU then copies
    only the VM's own layer. Never over an existing file. Returns ``{"made": [paths]}``.

    CLI Example:

    .. code-block:: bash

        salt kvm02 kvmcluster_migration.prepare "$(cat plan.json)" '[vda]'
    """
    libvirt = _libvirt()
    vm = _as_dict(vm_plan, "vm_plan")
    copy = _as_list(copy)
    view = _view(parameters, cluster)
    primary = view["storage"]["primary"]
    made = []
    conn = __utils__["kvmcluster_virt.connect"](uri)
    try:
        pool = conn.storagePoolLookupByName(primary["name"])
        pool.refresh(0)
        for d in vm.get("disks") or []:
            if d["target"] not in copy:
                continue
            if os.path.dirname(d["path"]) != primary["path"].rstrip("/") or \
                    os.path.exists(d["path"]) or _vol_exists(pool, d["path"]):
                _delete_made(conn, made)
                raise CommandExecutionError(f"{d['path']}: not a free path of the primary pool "
                                            "here")
            try:
                vol = pool.createXML(_vol_xml(
                    os.path.basename(d["path"]), d["capacity"], d.get("format") or "raw",
                    (d.get("backing") or [None])[0], d.get("backing_format")), 0)
            except libvirt.libvirtError as exc:
                _delete_made(conn, made)
                raise CommandExecutionError(f"cannot make {d['path']} here: "
                                            f"{exc.get_error_message()}") from exc
            made.append(vol.path())
        return {"made": made}
    finally:
        conn.close()


def _vol_exists(pool, path):
    libvirt = _libvirt()
    try:
        pool.storageVolLookupByName(os.path.basename(path))
        return True
    except libvirt.libvirtError:
        return False


def _delete_made(conn, paths):
    libvirt = _libvirt()
    for path in paths:
        try:
            conn.storageVolLookupByPath(path).delete(0)
        except libvirt.libvirtError:
            pass


def unprepare(name, paths, parameters=None, cluster=None, uri=DEFAULT_URI):
    """
    Undo ``prepare`` after a migration that did not happen: the disks it made, unless a VM
    named ``name`` is defined here (then they are its disks now) or another domain uses them.

    CLI Example:

    .. code-block:: bash

        salt kvm02 kvmcluster_migration.unprepare web1 '["/data01/primary/web1.qcow2"]'
    """
    return source_cleanup(name, paths, parameters=parameters, cluster=cluster, uri=uri)


def migrate(name, target, copy=(), parameters=None, cluster=None, uri=DEFAULT_URI,
            bandwidth=None):
    """
    Move running VM ``name`` live to node ``target``: peer-to-peer from this node's
    libvirtd, persistent there, undefined here; the disks whose targets are in ``copy``
    (e.g. ``vda``) are copied to the same path on the target, the others stay where both
    nodes see them. Returns the duration, the guest's downtime and the data moved, as
    libvirt measured them. Run ``check`` on the target first (the runner does).
    ``bandwidth`` caps the migration's data stream (MiB/s; default: unlimited).

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_migration.migrate web1 kvm02 copy='[vda]'
    """
    libvirt = _libvirt()
    view = _view(parameters, cluster)
    duri = target_uri(view, target)
    copy = _as_list(copy)
    bandwidth = _bandwidth(bandwidth)
    conn = __utils__["kvmcluster_virt.connect"](uri)
    try:
        dom = _lookup(conn, name, view)
        if not dom.isActive():
            raise CommandExecutionError(f"VM {name} is not running: a live migration moves a "
                                        "running VM")
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                 | libvirt.VIR_MIGRATE_AUTO_CONVERGE)
        node = view["nodes"][target]
        # QEMU's data goes to the target's model address (the firewall admits the peers
        # there), not to whatever its host name resolves to: on the migration network when
        # there is one, where the target's QEMU then listens only.
        host = data_address(node)
        params = {libvirt.VIR_MIGRATE_PARAM_URI:
                  f"tcp://[{host}]" if ":" in host else f"tcp://{host}"}
        if node.get("migration_ip"):
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = host
        if bandwidth:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth
        if not view["migration"]["plaintext"]:
            # QEMU's stream (and the disk copy's NBD) over TLS with the nodes' certificates
            # of the cluster CA; the runner issues them before it asks for the move.
            flags |= libvirt.VIR_MIGRATE_TLS
        if copy:
            # The target made each copied disk (``prepare``) on the same backing file: only
            # the VM's own layer moves, a linked clone's golden base stays on the share.
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = copy
        autostart = bool(dom.autostart())  # not carried by libvirt's migration
        started = time.monotonic()
        try:
            dom.migrateToURI3(duri, params, flags)
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"migration of {name} to {target} failed, it keeps "
                                        f"running on {view['self']['name']}: "
                                        f"{exc.get_error_message()}") from exc
        took = time.monotonic() - started
    finally:
        conn.close()
    out = {"vm": name, "from": view["self"]["name"], "to": target, "seconds": round(took, 2),
           "copied": copy}
    try:
        dconn = __utils__["kvmcluster_virt.connect"](duri)
        try:
            ddom = dconn.lookupByName(name)
            stats = ddom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            if autostart:
                ddom.setAutostart(1)
            out["autostart"] = bool(ddom.autostart())
            out["running_on_target"] = bool(ddom.isActive())
            out["persistent_on_target"] = bool(ddom.isPersistent())
        finally:
            dconn.close()
        out["downtime_ms"] = stats.get("downtime")
        out["libvirt_ms"] = stats.get("time_elapsed")
        out["memory_bytes"] = stats.get("memory_processed")
        out["disk_bytes"] = stats.get("disk_processed")
    except (libvirt.libvirtError, CommandExecutionError) as exc:
        out["stats_error"] = str(exc)
    return out


def _bandwidth(value):
    """A migration's bandwidth cap in MiB/s (None: unlimited); anything else is refused."""
    if value in (None, "", 0, "0"):
        return None
    try:
        mib = int(str(value), 10)
    except ValueError:
        mib = -1
    if isinstance(value, bool) or not 1 <= mib <= 100000:
        raise CommandExecutionError(f"bandwidth={str(value)[:40]!r}: give MiB/s, 1-100000")
    return mib


# What a migration's progress line shows, from libvirt's statistics of the active job.
PROGRESS_KEYS = ("time_elapsed", "data_total", "data_processed", "data_remaining",
                 "memory_remaining", "memory_bps", "disk_remaining", "disk_bps",
                 "memory_dirty_rate")


def progress(name, parameters=None, cluster=None, uri=DEFAULT_URI):
    """
    The progress of VM ``name``'s migration while it runs on this node: libvirt's
    statistics of the domain's active job (elapsed ms, bytes sent and remaining, memory and
    disk rates). ``active`` is false when no job runs.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_migration.progress web1
    """
    libvirt = _libvirt()
    view = _view(parameters, cluster)
    conn = __utils__["kvmcluster_virt.connect"](uri)
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            dom = None  # gone: the migration has ended (or never began here)
        if dom is None or not dom.isActive():
            return {"vm": name, "active": False, "here": dom is not None}
        _lookup(conn, name, view)
        try:
            stats = dom.jobStats(0)
        except libvirt.libvirtError as exc:
            if not dom.isActive():  # it ended between the two calls
                return {"vm": name, "active": False, "here": True}
            raise CommandExecutionError(f"VM {name}: no job statistics: "
                                        f"{exc.get_error_message()}") from exc
    finally:
        conn.close()
    active = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE
    out = {"vm": name, "active": active}
    out.update({k: stats[k] for k in PROGRESS_KEYS if k in stats})
    return out


def _paths_in_use(conn):
    """Every file any domain of this node uses (sources and backing files)."""
    libvirt = _libvirt()
    used = set()
    for dom in conn.listAllDomains(0):
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
            root = ET.fromstring(dom.XMLDesc(flags))
            for src in root.iter("source"):
                if src.get("file"):
                    used.add(os.path.normpath(src.get("file")))
    return used


def source_cleanup(name, paths, parameters=None, cluster=None, uri=DEFAULT_URI):
    """
    After VM ``name`` moved away: delete the copies of its node-local disks (``paths``) it
    left on this node. Only when no VM named ``name`` is defined here any more, only
    volumes of the primary pool, never a file another domain here uses. Returns
    ``{"deleted", "kept": {path: why}}``.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_migration.source_cleanup web1 '["/data01/primary/web1.qcow2"]'
    """
    libvirt = _libvirt()
    paths = _as_list(paths)
    view = _view(parameters, cluster)
    primary = view["storage"]["primary"]
    conn = __utils__["kvmcluster_virt.connect"](uri)
    deleted, kept = [], {}
    try:
        try:
            conn.lookupByName(name)
            return {"deleted": [], "kept": {p: f"{name} is still defined here" for p in paths}}
        except libvirt.libvirtError:
            pass
        used = _paths_in_use(conn)
        for path in paths:
            path = os.path.normpath(path)
            if os.path.dirname(path) != os.path.normpath(primary["path"]):
                kept[path] = f"not in the primary pool ({primary['path']})"
                continue
            if path in used:
                kept[path] = "used by another domain here"
                continue
            try:
                vol = conn.storageVolLookupByPath(path)
                if vol.storagePoolLookupByVolume().name() != primary["name"]:
                    kept[path] = f"not a volume of pool {primary['name']}"
                    continue
                vol.delete(0)
                deleted.append(path)
            except libvirt.libvirtError as exc:
                kept[path] = f"not deleted: {exc.get_error_message()}"
    finally:
        conn.close()
    return {"deleted": deleted, "kept": kept}
