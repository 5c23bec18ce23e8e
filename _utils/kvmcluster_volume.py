"""
A libvirt storage volume's definition, written in one place for every volume the formula
makes (a VM's disks, a migration target's empty copies).

Each names its owner: the node's QEMU account. On a root-squashed NFS share libvirt
creates a volume as that account only when the definition says so (in a netfs pool it runs
the creation as the owner); without one it creates the file as the squashed root and then
fails to give it to root. Elsewhere the owner is who QEMU runs as anyway.

Pure code, but for reading the account database.
"""
import pwd
import xml.etree.ElementTree as ET

QEMU_ACCOUNTS = ("libvirt-qemu", "qemu")  # Debian/Ubuntu, EL

MODE = "0600"  # a guest's disk: the QEMU account's alone


def xml(name, capacity, fmt="qcow2", backing=None, backing_format=None, owner=None):
    """The ``<volume>`` XML: ``capacity`` in bytes, ``fmt`` of the target, an optional backing
    file (path, format), and ``owner`` as ``(uid, gid)`` or None for libvirt's default."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(capacity))
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if owner is not None:
        perms = ET.SubElement(target, "permissions")
        ET.SubElement(perms, "mode").text = MODE
        ET.SubElement(perms, "owner").text = str(int(owner[0]))
        ET.SubElement(perms, "group").text = str(int(owner[1]))
    if backing:
        bs = ET.SubElement(vol, "backingStore")
        ET.SubElement(bs, "path").text = backing
        ET.SubElement(bs, "format", type=backing_format or "raw")
    return ET.tostring(vol, encoding="unicode")


def qemu_account():
    """The account QEMU runs as here (``{"name", "uid", "gid"}``), None before libvirt made
    it."""
    for name in QEMU_ACCOUNTS:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"name": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid}
    return None


def owner():
    """``(uid, gid)`` of the QEMU account, the owner of every volume made; None without
    one (libvirt's default then)."""
    account = qemu_account()
    return (account["uid"], account["gid"]) if account else None
