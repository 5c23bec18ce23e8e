"""
libvirt storage pools of a kvmcluster node, through the libvirt Python binding.

Pools are described as plain data (type, target path, state, autostart) read back from the
pool's own XML, so that desired and actual pools compare field by field.
"""
import os
import xml.etree.ElementTree as ET

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_pool"

DEFAULT_URI = "qemu:///system"


def __virtual__():
    return __virtualname__


def _libvirt():
    return __utils__["kvmcluster_virt.binding"]()


def _connect(uri):
    return __utils__["kvmcluster_virt.connect"](uri)


def _on_pool(name, uri, what, action):
    """``action(pool)`` on pool ``name``; libvirt errors become CommandExecutionError."""
    libvirt = _libvirt()
    conn = _connect(uri)
    try:
        return action(conn.storagePoolLookupByName(name))
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"cannot {what} pool {name}: {exc}") from exc
    finally:
        conn.close()


def pool_xml(name, path, pool_type="dir", source=None):
    """
    The XML that defines pool ``name`` at ``path``. For ``netfs`` pools, ``source`` is
    ``{"host": ..., "dir": ..., "format": "nfs"}``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pool.pool_xml default /data01/primary
    """
    pool = ET.Element("pool", type=pool_type)
    ET.SubElement(pool, "name").text = name
    if pool_type == "netfs":
        if not source:
            raise CommandExecutionError("a netfs pool needs source host and dir")
        src = ET.SubElement(pool, "source")
        ET.SubElement(src, "host", name=source["host"])
        ET.SubElement(src, "dir", path=source["dir"])
        ET.SubElement(src, "format", type=source.get("format", "nfs"))
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = path
    return ET.tostring(pool, encoding="unicode")


def _parse(xml):
    root = ET.fromstring(xml)
    src = root.find("source")
    source = None
    if src is not None and src.find("host") is not None:
        source = {"host": src.find("host").get("name"), "dir": src.find("dir").get("path"),
                  "format": src.find("format").get("type") if src.find("format") is not None
                  else None}
    return {"type": root.get("type"), "target": root.findtext("target/path"), "source": source}


def describe(name, uri=DEFAULT_URI):
    """
    Pool ``name`` as data: ``exists``, ``type``, ``target``, ``source``, ``active``,
    ``autostart``, ``uuid``. A missing pool is ``{"exists": False}``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pool.describe default
    """
    libvirt = _libvirt()
    conn = _connect(uri)
    try:
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return {"name": name, "exists": False}
            raise CommandExecutionError(f"cannot look up pool {name}: {exc}") from exc
        # Inactive XML: the definition, which is what a redefinition would change.
        try:
            xml = pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
        except libvirt.libvirtError:
            xml = pool.XMLDesc(0)  # drivers without the flag (libvirt's test driver)
        desc = _parse(xml)
        desc.update(name=name, exists=True, active=bool(pool.isActive()),
                    autostart=bool(pool.autostart()), uuid=pool.UUIDString())
        return desc
    finally:
        conn.close()


def list_pools(uri=DEFAULT_URI):
    """
    Every pool on the node, described.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pool.list_pools
    """
    conn = _connect(uri)
    try:
        names = conn.listAllStoragePools()
        names = sorted(p.name() for p in names)
    finally:
        conn.close()
    return {n: describe(n, uri) for n in names}


def ensure(name, path, pool_type="dir", source=None, uri=DEFAULT_URI):
    """
    Make pool ``name`` defined at ``path`` (redefining it when its type, target or source
    drifted), built, started and autostarted. Returns the steps taken.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pool.ensure default /data01/primary
    """
    libvirt = _libvirt()
    want = {"type": pool_type, "target": path, "source": source}
    steps = []
    conn = _connect(uri)
    try:
        cur = describe(name, uri)
        try:
            if cur["exists"] and {k: cur[k] for k in want} != want:
                pool = conn.storagePoolLookupByName(name)
                if pool.isActive():
                    pool.destroy()  # stops the pool only; its files stay where they are
                pool.undefine()
                steps.append("undefined drifted definition")
                cur = {"exists": False}
            if not cur["exists"]:
                pool = conn.storagePoolDefineXML(pool_xml(name, path, pool_type, source), 0)
                steps.append("defined")
            pool = conn.storagePoolLookupByName(name)
            if pool_type == "dir" and not os.path.isdir(path):
                _make_dir(path)
                steps.append("built")
            if not pool.isActive():
                pool.create(0)
                steps.append("started")
            if not pool.autostart():
                pool.setAutostart(1)
                steps.append("autostart set")
        except libvirt.libvirtError as exc:
            raise CommandExecutionError(f"pool {name} at {path}: {exc} (steps done: "
                                        f"{', '.join(steps) or 'none'})") from exc
    finally:
        conn.close()
    return steps


def _make_dir(path):
    """The pool's directory, made by root (mode 0711, as libvirt makes it) and, under
    SELinux, labelled as the policy says before libvirtd opens it: libvirtd itself may not
    create a directory under a parent of no type of its own (e.g. default_t)."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    if os.path.exists("/sys/fs/selinux/enforce"):
        res = __salt__["cmd.run_all"](["restorecon", "-R", path], python_shell=False,
                                      ignore_retcode=True)
        if res["retcode"] != 0:
            raise CommandExecutionError(f"restorecon {path}: {res['stderr'].strip()}")


def refresh(name, uri=DEFAULT_URI):
    """
    Rescan pool ``name`` for volumes (e.g. made by another node on shared storage).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pool.refresh secondary
    """
    _on_pool(name, uri, "refresh", lambda pool: pool.refresh(0))
    return True


def volumes(name, uri=DEFAULT_URI):
    """
    Names of the volumes in pool ``name``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pool.volumes default
    """
    return sorted(_on_pool(name, uri, "list volumes of", lambda pool: pool.listVolumes()))
