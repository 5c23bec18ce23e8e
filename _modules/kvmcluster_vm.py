"""
The VMs of a kvmcluster node, through the libvirt Python binding only.

A VM the formula made carries a metadata element (namespace ``urn:kvmcluster:vm:1``) that
lists the volumes it created for it. Only such domains are changed or removed, and only
those volumes are ever deleted: never a golden image, a volume of another pool, or a volume
another domain uses.
"""
import logging
import os
import time
import xml.etree.ElementTree as ET

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "kvmcluster_vm"
__func_alias__ = {"list_": "list"}

DEFAULT_URI = "qemu:///system"
NS = "urn:kvmcluster:vm:1"
GIB = 1 << 30
CONSOLE_LOG = "/var/log/libvirt/qemu/{name}-console.log"


def __virtual__():
    return __virtualname__


def _libvirt():
    return __utils__["kvmcluster_virt.binding"]()


def _connect(uri):
    return __utils__["kvmcluster_virt.connect"](uri)


class _Conn:
    """``with _Conn(uri) as conn``: closed whatever happens."""

    def __init__(self, uri):
        self.uri = uri
        self.conn = None

    def __enter__(self):
        self.conn = _connect(self.uri)
        return self.conn

    def __exit__(self, *exc):
        try:
            self.conn.close()
        except Exception:  # pylint: disable=broad-except
            pass


def _domain(conn, name):
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


# ---- the domain XML -------------------------------------------------------------------

def _sub(parent, tag, text=None, **attrs):
    # ElementTree escapes markup but writes control characters that libvirt's parser
    # rejects or reads apart: refused here, before any XML reaches libvirt.
    __utils__["kvmcluster_safe.check"](f"libvirt XML <{tag}>", "xml",
                                       {"text": "" if text is None else str(text),
                                        **{k: str(v) for k, v in attrs.items()}})
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def domain_xml(vm, image, disks, network=None, bridge=None, guard=None):
    """
    The domain XML of ``vm`` (a VM of the model): ``image`` its golden image (for direct
    kernel boot), ``disks`` the volumes ``[{"path", "format", "pool", "name"}]`` (the first
    is the boot disk), on libvirt network ``network`` or else on ``bridge``, its NIC behind
    the traffic filter ``guard`` (``kvmcluster_guard.wanted``; None: no filter).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_vm.domain_xml '{"name": "web1", ...}' '{"name": "tiny"}' '[...]' network=host-bridge
    """
    dom = ET.Element("domain", type=vm["domain_type"])
    _sub(dom, "name", vm["name"])
    meta = _sub(dom, "metadata")
    own = ET.SubElement(meta, f"{{{NS}}}vm")
    _sub(own, f"{{{NS}}}image", image["name"])
    _sub(own, f"{{{NS}}}clone", vm["clone"])
    for d in disks:
        _sub(own, f"{{{NS}}}volume", pool=d["pool"], name=d["name"], path=d["path"])
    _sub(dom, "memory", vm["memory_mb"], unit="MiB")
    _sub(dom, "currentMemory", vm["memory_mb"], unit="MiB")
    _sub(dom, "vcpu", vm["vcpus"], placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm")
    if image.get("kernel"):
        _sub(os_el, "kernel", image["kernel"])
        if image.get("initrd"):
            _sub(os_el, "initrd", image["initrd"])
        if image.get("cmdline"):
            _sub(os_el, "cmdline", image["cmdline"])
    else:
        _sub(os_el, "boot", dev="hd")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if vm["domain_type"] == "kvm":
        # The host's CPU model, so that guests migrate between nodes of one CPU baseline.
        _sub(dom, "cpu", mode="host-model")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    for i, d in enumerate(disks):
        disk = _sub(dev, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=d["format"])
        _sub(disk, "source", file=d["path"])
        _sub(disk, "target", dev=f"vd{chr(ord('a') + i)}", bus="virtio")
    dev.append(interface_xml(vm["mac"], network, bridge, guard))
    serial = _sub(dev, "serial", type="pty")
    _sub(serial, "log", file=CONSOLE_LOG.format(name=vm["name"]), append="on")
    _sub(serial, "target", port=0)
    console = _sub(dev, "console", type="pty")
    _sub(console, "target", type="serial", port=0)
    _sub(dev, "memballoon", model="virtio")
    ET.register_namespace("kvmcluster", NS)
    return ET.tostring(dom, encoding="unicode")


def interface_xml(mac, network=None, bridge=None, guard=None):
    """The guest's NIC element: virtio, on a libvirt network or a host bridge, behind the
    traffic filter ``guard`` (None: none)."""
    if network:
        iface = ET.Element("interface", type="network")
        _sub(iface, "source", network=network)
    else:
        iface = ET.Element("interface", type="bridge")
        _sub(iface, "source", bridge=bridge)
    _sub(iface, "mac", address=mac)
    _sub(iface, "model", type="virtio")
    ref = __utils__["kvmcluster_guard.filterref"](guard)
    if ref is not None:
        for p in ref.iter("parameter"):
            __utils__["kvmcluster_safe.check"]("libvirt XML <parameter>", "xml",
                                               {"name": p.get("name"), "value": p.get("value")})
        iface.append(ref)
    return iface


# ---- reading a domain -----------------------------------------------------------------

STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down",
          5: "shut off", 6: "crashed", 7: "suspended"}


def _parse(xml_text):
    root = ET.fromstring(xml_text)
    mem = root.find("memory")
    unit = (mem.get("unit") or "KiB") if mem is not None else "KiB"
    scale = {"KiB": 1 / 1024, "k": 1 / 1024, "MiB": 1, "M": 1, "GiB": 1024, "G": 1024,
             "b": 1 / (1 << 20), "bytes": 1 / (1 << 20)}.get(unit, 1 / 1024)
    out = {"memory_mb": int(round(int(mem.text) * scale)) if mem is not None else None,
           "vcpus": int(root.findtext("vcpu") or 0)}
    nic = root.find("devices/interface")
    out["mac"] = out["network"] = out["bridge"] = None
    out["guard"] = __utils__["kvmcluster_guard.read"](nic)
    if nic is not None:
        m = nic.find("mac")
        src = nic.find("source")
        out["mac"] = m.get("address").lower() if m is not None else None
        if src is not None:
            out["network"] = src.get("network") if nic.get("type") == "network" else None
            out["bridge"] = src.get("bridge") if nic.get("type") == "bridge" else None
    out["disks"] = []
    for d in root.findall("devices/disk"):
        if d.get("device") != "disk":
            continue
        src = d.find("source")
        path = src.get("file") or src.get("dev") if src is not None else None
        chain = [b.find("source").get("file") for b in d.iter("backingStore")
                 if b.find("source") is not None and b.find("source").get("file")]
        out["disks"].append({"path": path, "target": d.find("target").get("dev"),
                             "backing": chain})
    own = root.find(f"metadata/{{{NS}}}vm")
    out["owned"] = own is not None
    out["volumes"] = [dict(v.attrib) for v in own.findall(f"{{{NS}}}volume")] if own is not None else []
    out["image"] = own.findtext(f"{{{NS}}}image") if own is not None else None
    out["clone"] = own.findtext(f"{{{NS}}}clone") if own is not None else None
    return out


def describe(name, uri=DEFAULT_URI):
    """
    VM ``name`` on this node as data: ``exists``, ``owned`` (made by kvmcluster), ``state``,
    ``autostart``, the persistent ``vcpus``, ``memory_mb`` and NIC, its disks (path,
    capacity), the volumes the formula created for it, and its snapshots.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.describe web1
    """
    libvirt = _libvirt()
    with _Conn(uri) as conn:
        dom = _domain(conn, name)
        if dom is None:
            return {"name": name, "exists": False}
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE
        out = {"name": name, "exists": True, **_parse(dom.XMLDesc(flags))}
        out["state"] = STATES.get(dom.state()[0], "unknown")
        out["active"] = bool(dom.isActive())
        out["autostart"] = bool(dom.autostart())
        for d in out["disks"]:
            d["capacity"] = _capacity(conn, d["path"])
        out["snapshots"] = sorted(dom.snapshotListNames()) if out["exists"] else []
        if out["active"]:
            live = _parse(dom.XMLDesc(0))
            out["live"] = {"vcpus": dom.info()[3], "memory_mb": dom.info()[2] // 1024,
                           "disks": [d["path"] for d in live["disks"]]}
        return out


def _capacity(conn, path):
    libvirt = _libvirt()
    try:
        return conn.storageVolLookupByPath(path).info()[1]
    except (libvirt.libvirtError, TypeError):
        try:
            return os.path.getsize(path)
        except (OSError, TypeError):
            return None


def list_(uri=DEFAULT_URI):
    """
    The VMs on this node: state, vcpus, memory, disks, whether kvmcluster made them, and
    the addresses the node sees for their MAC (its ARP table: the lease in use).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.list
    """
    libvirt = _libvirt()
    out = {}
    with _Conn(uri) as conn:
        for dom in conn.listAllDomains(0):
            info = _parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            addrs = []
            if dom.isActive():
                try:
                    src = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP
                    for nic in (dom.interfaceAddresses(src) or {}).values():
                        addrs += [a["addr"] for a in nic.get("addrs") or []]
                except libvirt.libvirtError:
                    pass
            out[dom.name()] = {
                "state": STATES.get(dom.state()[0], "unknown"), "vcpus": info["vcpus"],
                "memory_mb": info["memory_mb"], "mac": info["mac"],
                "disks": [d["path"] for d in info["disks"]], "kvmcluster": info["owned"],
                "autostart": bool(dom.autostart()), "addresses": sorted(addrs)}
    return out


# ---- volumes --------------------------------------------------------------------------

def _pool(conn, name):
    libvirt = _libvirt()
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"pool {name} is not defined on this node: {exc}") from exc
    if not pool.isActive():
        raise CommandExecutionError(f"pool {name} is not active on this node")
    pool.refresh(0)
    return pool


def golden(image, secondary_pool, uri=DEFAULT_URI):
    """
    The golden volume of ``image`` (a model image) in the secondary pool: ``{"path",
    "capacity", "format"}``; CommandExecutionError when it is not there.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.golden '{"name": "tiny", "volume": "tiny.raw", "format": "raw"}' secondary
    """
    libvirt = _libvirt()
    with _Conn(uri) as conn:
        pool = _pool(conn, secondary_pool)
        try:
            if image.get("volume"):
                vol = pool.storageVolLookupByName(image["volume"])
            else:
                vol = conn.storageVolLookupByPath(image["path"])
        except libvirt.libvirtError as exc:
            where = image.get("volume") or image.get("path")
            raise CommandExecutionError(f"golden image {image['name']} ({where}) is not in "
                                        f"pool {secondary_pool}: {exc}") from exc
        if vol.storagePoolLookupByVolume().name() != secondary_pool:
            raise CommandExecutionError(f"golden image {image['name']} ({vol.path()}) is not a "
                                        f"volume of pool {secondary_pool}")
        return {"path": vol.path(), "capacity": vol.info()[1], "format": image["format"]}


def _vol_xml(name, capacity, backing=None):
    owner = __utils__["kvmcluster_volume.owner"]()
    return __utils__["kvmcluster_volume.xml"](
        name, capacity, "qcow2", backing and backing["path"], backing and backing["format"],
        owner=owner)


def volume_exists(pool, name, uri=DEFAULT_URI):
    """
    Whether volume ``name`` is in ``pool``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.volume_exists default web1.qcow2
    """
    with _Conn(uri) as conn:
        return _find_volume(conn, pool, name) is not None


def _find_volume(conn, pool, name):
    """Volume ``name`` of the active pool ``pool``, or None."""
    libvirt = _libvirt()
    try:
        return _pool(conn, pool).storageVolLookupByName(name)
    except libvirt.libvirtError:
        return None


def create_volume(pool, name, size_gb, source=None, linked=False, uri=DEFAULT_URI):
    """
    A qcow2 volume ``name`` of ``size_gb`` GiB in ``pool``: empty, a full copy of the
    golden volume ``source`` (``{"path", "format"}``), or with ``linked=True`` an overlay
    backed by it. Returns ``{"pool", "name", "path", "format"}``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.create_volume default web1.qcow2 10 \\
            '{"path": "/mnt/secondary/tiny.raw", "format": "raw"}'
    """
    libvirt = _libvirt()
    want = int(size_gb) * GIB
    with _Conn(uri) as conn:
        p = _pool(conn, pool)
        try:
            if source and linked:
                vol = p.createXML(_vol_xml(name, want, backing=source), 0)
            elif source:
                src = conn.storageVolLookupByPath(source["path"])
                vol = p.createXMLFrom(_vol_xml(name, src.info()[1]), src, 0)
                if vol.info()[1] < want:
                    vol.resize(want, 0)
            else:
                vol = p.createXML(_vol_xml(name, want), 0)
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"cannot create volume {name} in pool {pool}: "
                                        f"{exc}") from exc
        return {"pool": pool, "name": name, "path": vol.path(), "format": "qcow2"}


def delete_volume(pool, name, uri=DEFAULT_URI):
    """
    Delete volume ``name`` of ``pool`` if it is there and no domain uses it (the undo of a
    VM creation that failed half-way).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.delete_volume default web1.qcow2
    """
    with _Conn(uri) as conn:
        vol = _find_volume(conn, pool, name)
        if vol is None:
            return False
        if vol.path() in _in_use_elsewhere(conn, None):
            raise CommandExecutionError(f"volume {name} of pool {pool} is used by a domain")
        vol.delete(0)
        return True


def resize_disk(name, path, size_gb, uri=DEFAULT_URI):
    """
    Grow disk ``path`` of VM ``name`` to ``size_gb`` GiB: live (blockResize) when it runs,
    else the volume. Never shrinks. Returns ``live`` or ``offline``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.resize_disk web1 /data01/primary/web1.qcow2 20
    """
    libvirt = _libvirt()
    want = int(size_gb) * GIB
    with _Conn(uri) as conn:
        vol = conn.storageVolLookupByPath(path)
        if vol.info()[1] > want:
            raise CommandExecutionError(f"{path} is larger than {size_gb} GiB; disks are never "
                                        "shrunk (data would be lost)")
        dom = _domain(conn, name)
        try:
            if dom is not None and dom.isActive():
                dom.blockResize(path, want, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                return "live"
            vol.resize(want, 0)
            return "offline"
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"cannot grow {path}: {exc}") from exc


# ---- lifecycle ------------------------------------------------------------------------

def define(xml, uri=DEFAULT_URI):
    """
    Define (persistently) the domain of ``xml``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.define "$(cat web1.xml)"
    """
    libvirt = _libvirt()
    with _Conn(uri) as conn:
        try:
            return conn.defineXML(xml).name()
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"cannot define the domain: {exc}") from exc


def _on(name, uri, what, action):
    libvirt = _libvirt()
    with _Conn(uri) as conn:
        dom = _domain(conn, name)
        if dom is None:
            raise CommandExecutionError(f"VM {name} is not defined on this node")
        try:
            return action(conn, dom)
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"cannot {what} VM {name}: {exc}") from exc


def start(name, uri=DEFAULT_URI):
    """
    Start VM ``name`` (nothing when it runs).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.start web1
    """
    return _on(name, uri, "start", lambda c, d: d.isActive() or d.create() == 0)


def set_autostart(name, on=True, uri=DEFAULT_URI):
    """
    Whether libvirt starts VM ``name`` when the node boots.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.set_autostart web1 True
    """
    return _on(name, uri, "set autostart of", lambda c, d: d.setAutostart(1 if on else 0) == 0)


def stop(name, timeout=120, uri=DEFAULT_URI):
    """
    Stop VM ``name``: an ACPI shutdown, then up to ``timeout`` seconds for the guest to
    power off, and only then a hard power-off. Returns how it stopped: ``acpi`` (with the
    seconds it took), ``destroyed`` (the guest ignored ACPI) or ``already``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.stop web1 timeout=60
    """
    def act(conn, dom):
        if not dom.isActive():
            return {"how": "already", "seconds": 0}
        t0 = time.monotonic()
        try:
            dom.shutdown()
        except _libvirt().libvirtError as exc:
            log.warning("ACPI shutdown of %s refused: %s", name, exc)
        # Bounded: one look every half second until the timeout.
        for _ in range(int(timeout) * 2 + 1):
            if not dom.isActive():
                return {"how": "acpi", "seconds": round(time.monotonic() - t0, 1)}
            if time.monotonic() - t0 >= timeout:
                break
            time.sleep(0.5)
        if dom.isActive():
            dom.destroy()
        return {"how": "destroyed", "seconds": round(time.monotonic() - t0, 1)}
    return _on(name, uri, "stop", act)


def set_resources(name, vcpus=None, memory_mb=None, uri=DEFAULT_URI):
    """
    The persistent vcpus and memory of VM ``name``; a running VM gets a smaller memory at
    once through its balloon. Returns what took effect ``live`` and what waits for the
    ``next boot``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.set_resources web1 vcpus=2 memory_mb=2048
    """
    libvirt = _libvirt()

    def act(conn, dom):
        cfg = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        cur = _parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        active = bool(dom.isActive())
        done = {"live": [], "next boot": []}
        if vcpus is not None and vcpus != cur["vcpus"]:
            if vcpus > cur["vcpus"]:
                dom.setVcpusFlags(vcpus, cfg | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
                dom.setVcpusFlags(vcpus, cfg)
            else:
                dom.setVcpusFlags(vcpus, cfg)
                dom.setVcpusFlags(vcpus, cfg | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
            done["next boot" if active else "live"].append("vcpus")
        if memory_mb is not None and memory_mb != cur["memory_mb"]:
            kib = int(memory_mb) * 1024
            if memory_mb > cur["memory_mb"]:
                dom.setMemoryFlags(kib, cfg | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
                dom.setMemoryFlags(kib, cfg)
                done["next boot" if active else "live"].append("memory")
            else:
                dom.setMemoryFlags(kib, cfg)
                dom.setMemoryFlags(kib, cfg | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
                live = not active
                if active:
                    # The guest gives memory back through its balloon driver, if it has one:
                    # "live" only when it did (looked at for up to 5 s).
                    dom.setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    for _ in range(10):
                        if dom.info()[2] <= kib:
                            live = True
                            break
                        time.sleep(0.5)
                done["live" if live else "next boot"].append("memory")
        return done
    return _on(name, uri, "change the resources of", act)


def set_interface(name, mac, network=None, bridge=None, guard=None, uri=DEFAULT_URI):
    """
    The NIC of VM ``name`` in its persistent definition. A running VM whose NIC keeps its
    MAC and source gets a new traffic filter (``guard``) live as well; any other change of
    a running VM's NIC takes effect at its next boot. Returns "live" or "next boot".

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.set_interface web1 52:54:00:12:34:56 network=host-bridge
    """
    libvirt = _libvirt()

    def act(conn, dom):
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        devices = root.find("devices")
        old = devices.find("interface")
        new = interface_xml(mac, network, bridge, guard)
        if old is not None:
            devices.insert(list(devices).index(old), new)
            devices.remove(old)
        else:
            devices.append(new)
        conn.defineXML(ET.tostring(root, encoding="unicode"))
        if not dom.isActive():
            return "live"
        # A running NIC on a libvirt network reads back as type bridge (its actual device),
        # with the network named in its source: the same NIC when MAC and source agree.
        running = ET.fromstring(dom.XMLDesc(0)).find("devices/interface")
        src = running.find("source") if running is not None else None
        same = running is not None and src is not None and (
            (running.find("mac").get("address") or "").lower() == mac.lower()
            and ((network and src.get("network") == network)
                 or (not network and src.get("bridge") == bridge)))
        if not same:
            return "next boot"
        if __utils__["kvmcluster_guard.read"](running) != guard:
            # The filter is the guest's isolation: never left for a reboot that may not come.
            # The new definition's NIC, matched by its MAC, carries the filter (or none).
            dom.updateDeviceFlags(ET.tostring(new, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
            if __utils__["kvmcluster_guard.read"](
                    ET.fromstring(dom.XMLDesc(0)).find("devices/interface")) != guard:
                raise CommandExecutionError(f"libvirt kept the old traffic filter on the "
                                            f"running VM {name}")
        return "live"
    return _on(name, uri, "change the NIC of", act)


def ensure_filter(test=False, uri=DEFAULT_URI):
    """
    The guests' traffic filter (``kvmcluster-guest``: libvirt's clean-traffic and no DHCP
    server) defined in libvirt as the formula writes it. Returns ``{"old", "new"}`` (rule
    texts) when it was (``test``: would be) defined or changed, ``{}`` when it is right.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.ensure_filter
    """
    libvirt = _libvirt()
    name = __utils__["kvmcluster_guard.filter_name"]()
    want = ET.fromstring(__utils__["kvmcluster_guard.filter_xml"]())
    with _Conn(uri) as conn:
        try:
            have = ET.fromstring(conn.nwfilterLookupByName(name).XMLDesc(0))
        except libvirt.libvirtError:
            have = None
        old = _filter_rules(have)
        if old == _filter_rules(want):
            return {}
        if not test:
            if have is not None and have.findtext("uuid"):
                _sub(want, "uuid", have.findtext("uuid"))  # the same filter, redefined
            try:
                conn.nwfilterDefineXML(ET.tostring(want, encoding="unicode"))
            except libvirt.libvirtError as exc:
                raise CommandExecutionError(f"cannot define the guests' traffic filter "
                                            f"{name}: {exc}") from exc
        return {"old": old, "new": _filter_rules(want)}


def wanted_filter():
    """
    The guests' traffic filter as ``ensure_filter`` reports it (its references and rules),
    without libvirt.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.wanted_filter
    """
    return _filter_rules(ET.fromstring(__utils__["kvmcluster_guard.filter_xml"]()))


def _filter_rules(root):
    """A filter's references and rules as comparable text (libvirt adds uuid, ids)."""
    if root is None:
        return None
    out = [f"chain={root.get('chain')}"]
    for el in root:
        if el.tag == "filterref":
            out.append(f"filterref {el.get('filter')}")
        elif el.tag == "rule":
            proto = " ".join(f"{c.tag}({','.join(f'{k}={v}' for k, v in sorted(c.attrib.items()))})"
                             for c in el)
            out.append(f"rule {el.get('action')} {el.get('direction')} "
                       f"{el.get('priority')} {proto}")
    return out


def _in_use_elsewhere(conn, name):
    """Paths of every disk (and backing file) of every other domain on this node."""
    libvirt = _libvirt()
    used = set()
    for dom in conn.listAllDomains(0):
        if dom.name() == name:
            continue
        for flags in (libvirt.VIR_DOMAIN_XML_INACTIVE, 0):
            if flags == 0 and not dom.isActive():
                continue
            for d in _parse(dom.XMLDesc(flags))["disks"]:
                used.update(p for p in [d["path"], *d["backing"]] if p)
    return used


def remove(name, pool, protected=(), uri=DEFAULT_URI):
    """
    Remove VM ``name`` if kvmcluster made it: power it off, undefine it, and delete the
    volumes it created for it that are in ``pool``, are none of the ``protected`` paths
    (the golden images) and no other domain uses. Refuses a domain without kvmcluster's
    metadata and a VM with snapshots. Returns the volumes deleted and those kept (why).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.remove web1 default
    """
    libvirt = _libvirt()
    with _Conn(uri) as conn:
        dom = _domain(conn, name)
        if dom is None:
            return {"deleted": [], "kept": {}}
        info = _parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        if not info["owned"]:
            raise CommandExecutionError(f"VM {name} was not made by kvmcluster (no kvmcluster "
                                        "metadata): left alone")
        if dom.snapshotNum(0):
            raise CommandExecutionError(f"VM {name} has snapshots "
                                        f"({', '.join(dom.snapshotListNames())}); delete them "
                                        "first (kvmcluster_vm.snapshot_delete merges them)")
        used = _in_use_elsewhere(conn, name)
        protected = {os.path.realpath(p) for p in protected if p}
        try:
            if dom.isActive():
                dom.destroy()
            # The formula's domains boot without NVRAM (no UEFI vars to drop).
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"cannot remove VM {name}: {exc}") from exc
        deleted, kept = [], {}
        for v in info["volumes"]:
            path = v.get("path")
            why = None
            try:
                vol = conn.storageVolLookupByPath(path)
                in_pool = vol.storagePoolLookupByVolume().name()
            except libvirt.libvirtError:
                vol, in_pool = None, None
            if vol is None:
                why = "no longer a volume"
            elif in_pool != pool or v.get("pool") != pool:
                why = f"in pool {in_pool}, not {pool}"
            elif os.path.realpath(path) in protected:
                why = "a golden image"
            elif path in used:
                why = "used by another domain"
            if why:
                kept[path] = why
                continue
            try:
                vol.delete(0)
                deleted.append(path)
            except libvirt.libvirtError as exc:
                kept[path] = f"delete failed: {exc}"
        return {"deleted": deleted, "kept": kept}


# ---- presence on the network ----------------------------------------------------------

def answers(ip, mac=None, timeout=2):
    """
    Whether something answers at ``ip`` from this node: an echo reply, or (a guest that
    drops pings) a neighbour entry for it, with ``mac`` when given. Returns how it answered
    (a text) or an empty string. Bounded by ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt kvm02 kvmcluster_vm.answers 10.0.0.111 52:54:00:12:34:56
    """
    import json  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel

    argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.5", "-W", str(int(timeout)), str(ip)]
    if ":" in str(ip):
        argv.insert(1, "-6")
    try:
        if subprocess.run(argv, capture_output=True, timeout=int(timeout) + 3,
                          check=False).returncode == 0:
            return "echo reply"
        proc = subprocess.run(["ip", "-j", "neigh", "show", "to", str(ip)],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for entry in json.loads(proc.stdout or "[]"):
        lladdr = (entry.get("lladdr") or "").lower()
        states = set(entry.get("state") or [])
        if lladdr and states & {"REACHABLE", "DELAY", "PROBE"} and (
                mac is None or lladdr == str(mac).lower()):
            return f"neighbour {lladdr}"
    return ""


# ---- capacity -------------------------------------------------------------------------

def capacity(uri=DEFAULT_URI):
    """
    This node's memory (MiB) and CPUs, and what the running domains commit of them
    (``committed``: name -> {memory_mb, vcpus}).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.capacity
    """
    with _Conn(uri) as conn:
        info = conn.getInfo()
        committed = {}
        for dom in conn.listAllDomains(0):
            if dom.isActive():
                i = dom.info()
                committed[dom.name()] = {"memory_mb": i[1] // 1024, "vcpus": i[3]}
        return {"memory_mb": info[1], "cpus": info[2], "committed": committed}


# ---- snapshots ------------------------------------------------------------------------

def _snap_names(dom):
    return sorted(dom.snapshotListNames())


def snapshot(name, snap, uri=DEFAULT_URI):
    """
    An external disk-only snapshot ``snap`` of VM ``name`` (running or not): each disk gets
    a qcow2 overlay ``<disk>.<snap>`` beside it, the guest keeps running on the overlays.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.snapshot web1 before-upgrade
    """
    libvirt = _libvirt()
    if not (isinstance(snap, str) and snap.replace("-", "").replace("_", "").isalnum()):
        raise CommandExecutionError(f"{snap!r} is not a snapshot name (letters, digits, -_)")

    def act(conn, dom):
        if snap in _snap_names(dom):
            raise CommandExecutionError(f"VM {name} already has snapshot {snap}")
        info = _parse(dom.XMLDesc(0))
        root = ET.Element("domainsnapshot")
        _sub(root, "name", snap)
        disks = _sub(root, "disks")
        for d in info["disks"]:
            el = _sub(disks, "disk", name=d["target"], snapshot="external")
            _sub(el, "driver", type="qcow2")
            _sub(el, "source", file=f"{os.path.splitext(d['path'])[0]}.{snap}.qcow2")
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), flags)
        return {"snapshot": snap, "disks": [d["path"] for d in _parse(dom.XMLDesc(0))["disks"]]}
    return _on(name, uri, "snapshot", act)


def snapshots(name, uri=DEFAULT_URI):
    """
    The snapshots of VM ``name``: name -> creation time and the overlay of each disk.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.snapshots web1
    """
    def act(conn, dom):
        out = {}
        for sn in dom.listAllSnapshots(0):
            root = ET.fromstring(sn.getXMLDesc(0))
            out[sn.getName()] = {
                "created": int(root.findtext("creationTime") or 0),
                "disks": [d.find("source").get("file") for d in root.findall("disks/disk")
                          if d.find("source") is not None]}
        return out
    return _on(name, uri, "list the snapshots of", act)


def snapshot_delete(name, snap, timeout=600, uri=DEFAULT_URI):
    """
    Delete snapshot ``snap`` of VM ``name``, the newest one, merging its overlays back into
    the disks below them (a block commit, the guest keeps running), then removing the
    overlays and the snapshot's metadata.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_vm.snapshot_delete web1 before-upgrade
    """
    libvirt = _libvirt()

    def act(conn, dom):
        names = {sn.getName(): sn for sn in dom.listAllSnapshots(0)}
        if snap not in names:
            raise CommandExecutionError(f"VM {name} has no snapshot {snap}")
        current = _parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))["disks"]
        root = ET.fromstring(names[snap].getXMLDesc(0))
        overlays = {d.get("name"): d.find("source").get("file")
                    for d in root.findall("disks/disk") if d.find("source") is not None}
        for d in current:
            if overlays.get(d["target"]) and d["path"] != overlays[d["target"]]:
                raise CommandExecutionError(f"snapshot {snap} is not the newest of {name} "
                                            f"({d['target']} is on {d['path']}): delete the "
                                            "newer ones first")
        merged = []
        for target, overlay in overlays.items():
            if dom.isActive():
                flags = (libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                         | libvirt.VIR_DOMAIN_BLOCK_COMMIT_DELETE)
                dom.blockCommit(target, None, None, 0, flags)
                t0 = time.monotonic()
                # Bounded: the job is pivoted once it reports ready.
                while time.monotonic() - t0 < timeout:
                    job = dom.blockJobInfo(target, 0)
                    if job and job.get("end") and job["cur"] == job["end"]:
                        break
                    time.sleep(0.2)
                else:
                    dom.blockJobAbort(target, 0)
                    raise CommandExecutionError(f"merging {overlay} into its base took more "
                                                f"than {timeout} s; aborted, nothing lost")
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                _drop_overlay(conn, overlay)
            else:
                base = _backing_of(overlay)
                _commit_offline(overlay)
                _repoint(conn, dom, target, base)
                _drop_overlay(conn, overlay)
            merged.append(overlay)
        names[snap].delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        return {"merged": merged,
                "disks": [d["path"] for d in _parse(dom.XMLDesc(0))["disks"]]}
    return _on(name, uri, "delete a snapshot of", act)


def _drop_overlay(conn, path):
    libvirt = _libvirt()
    try:
        conn.storageVolLookupByPath(path).delete(0)
    except libvirt.libvirtError:
        if os.path.exists(path):
            os.unlink(path)


def _backing_of(path):
    import json  # pylint: disable=import-outside-toplevel

    res = __salt__["cmd.run_all"](["qemu-img", "info", "-U", "--output=json", path],
                                  python_shell=False)
    if res["retcode"] != 0:
        raise CommandExecutionError(f"qemu-img info {path}: {res['stderr']}")
    base = json.loads(res["stdout"]).get("full-backing-filename") or \
        json.loads(res["stdout"]).get("backing-filename")
    if not base:
        raise CommandExecutionError(f"{path} has no backing file to merge into")
    return base


def _commit_offline(path):
    res = __salt__["cmd.run_all"](["qemu-img", "commit", "-d", path], python_shell=False)
    if res["retcode"] != 0:
        raise CommandExecutionError(f"qemu-img commit {path}: {res['stderr']}")


def _repoint(conn, dom, target, base):
    libvirt = _libvirt()
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for d in root.findall("devices/disk"):
        t = d.find("target")
        if t is not None and t.get("dev") == target:
            d.find("source").set("file", base)
            for bs in d.findall("backingStore"):
                d.remove(bs)
            d.find("driver").set("type", "qcow2" if base.endswith(".qcow2") else
                                 d.find("driver").get("type"))
    conn.defineXML(ET.tostring(root, encoding="unicode"))
