"""
libvirt daemon configuration of a kvmcluster node: libvirtd.conf managed key by key and
socket unit drop-ins.
"""
import os
import re
import stat

__virtualname__ = "kvmcluster_libvirt"

DROPIN_NAME = "kvmcluster.conf"
_KEY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def __virtual__():
    return __virtualname__


def render_value(value):
    """
    A Python value in libvirt's config syntax: ints bare, strings quoted, lists bracketed.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_libvirt.render_value libvirt
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def conf_read(path):
    """
    The keys set (not commented out) in a libvirt config file, as raw value strings.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_libvirt.conf_read /etc/libvirt/libvirtd.conf
    """
    out = {}
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = _KEY.match(line)
            if m and not line.lstrip().startswith("#"):
                out[m.group(1)] = m.group(2)
    return out


def conf_diff(path, settings):
    """
    ``{key: {"old": raw or None, "new": raw}}`` for each key of ``settings`` whose value in
    ``path`` differs.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_libvirt.conf_diff /etc/libvirt/libvirtd.conf '{listen_tls: 0}'
    """
    cur = conf_read(path)
    diff = {}
    for key, value in settings.items():
        new = render_value(value)
        if cur.get(key) != new:
            diff[key] = {"old": cur.get(key), "new": new}
    return diff


def conf_write(path, settings, sep=" = "):
    """
    Set each key of ``settings`` in ``path``: an existing line is replaced in place, a
    missing key is appended. Other lines and comments stay as they are. ``sep`` is
    ``" = "`` for libvirt's files and ``"="`` for shell-style environment files.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_libvirt.conf_write /etc/libvirt/libvirtd.conf '{listen_tls: 0}'
    """
    lines = []
    # The file keeps its mode: qemu.conf is 0600 (it may hold VNC/SPICE passwords).
    mode = 0o600
    if os.path.exists(path):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    pending = dict(settings)
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if m and not line.lstrip().startswith("#") and m.group(1) in pending:
            lines[i] = f"{m.group(1)}{sep}{render_value(pending.pop(m.group(1)))}"
    if pending:
        lines.append("")
        lines.append("# Set by kvmcluster (pillar kvmcluster:libvirt).")
        lines += [f"{k}{sep}{render_value(v)}" for k, v in pending.items()]
    __salt__["kvmcluster_node.write_file"](path, "\n".join(lines) + "\n", mode=mode)
    return sorted(settings)


def socket_dropin(group, mode):
    """
    The drop-in text that gives a libvirt socket unit its group and mode.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_libvirt.socket_dropin libvirt 0770
    """
    return ("# Managed by kvmcluster (pillar kvmcluster:libvirt:unix_sock_*).\n"
            f"[Socket]\nSocketGroup={group}\nSocketMode={mode}\n")


def dropin_path(unit):
    """
    Where kvmcluster's drop-in for ``unit`` lives.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_libvirt.dropin_path libvirtd.socket
    """
    return f"/etc/systemd/system/{unit}.d/{DROPIN_NAME}"
