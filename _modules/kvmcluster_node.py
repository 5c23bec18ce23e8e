"""
What a kvmcluster node is, seen from the node itself: CPU virtualization flags, /dev/kvm,
OS family, the libvirt Python binding, systemd, and its own entry of the cluster model;
and the small host primitives the states share (files, systemd units; argv, no shell).
"""
import importlib.util
import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_node"


def __virtual__():
    return __virtualname__


def cpu_flags(path="/proc/cpuinfo"):
    """
    The virtualization extensions the CPU advertises: a subset of ``["vmx", "svm"]``.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.cpu_flags
    """
    found = set()
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    found |= {"vmx", "svm"} & set(line.split(":", 1)[1].split())
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}") from exc
    return sorted(found)


def kvm_device(path="/dev/kvm"):
    """
    Whether the KVM device exists and can be opened for reading and writing.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.kvm_device
    """
    exists = os.path.exists(path)
    usable = False
    reason = "missing"
    if exists:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            os.close(fd)
            usable, reason = True, "ok"
        except OSError as exc:
            reason = exc.strerror
    return {"path": path, "exists": exists, "usable": usable, "reason": reason}


def systemd_running():
    """
    True when systemd is this host's init (so service states can be trusted).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.systemd_running
    """
    return os.path.isdir("/run/systemd/system")


def libvirt_binding():
    """
    Whether the libvirt Python binding is importable by the interpreter Salt runs on.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.libvirt_binding
    """
    return importlib.util.find_spec("libvirt") is not None


def info(node_model=None):
    """
    The node's own view: virtualization flags, /dev/kvm, OS family, libvirt binding, systemd,
    and ``model``: the cluster model entry it resolved for itself. Within a state run (see
    ``kvmcluster.info``) that entry comes from the validated model; called directly it is
    ``node_model`` when given, else taken from the model loaded earlier in the run, if any.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.info
        salt-ssh '*' state.apply kvmcluster.info
    """
    if node_model is None and "kvmcluster_model.model" in __context__:
        node_model = __context__["kvmcluster_model.model"]["self"]
    return {
        "id": __grains__.get("id"),
        "os_family": __grains__.get("os_family"),
        "os": f"{__grains__.get('os')} {__grains__.get('osrelease')}",
        "cpu_flags": cpu_flags(),
        "kvm_device": kvm_device(),
        "libvirt_binding": libvirt_binding(),
        "systemd": systemd_running(),
        "model": node_model,
    }


def file_text(path):
    """
    A file's text, or None when it does not exist.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.file_text /etc/libvirt/libvirtd.conf
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_file(path, text, mode=0o644):
    """
    Write ``text`` to ``path`` atomically, with ``mode`` (a secret is never readable by
    others, not even for a moment: the file is created with its mode).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.write_file /etc/systemd/system/x.d/y.conf '[Socket]'
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.kvmcluster-tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # atomic: readers see the old or the new file, never half
    return True


def systemctl(*args, check=True):
    """
    Run ``systemctl ARGS`` (argv list, no shell); returns its result dict.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.systemctl is-active libvirtd.service
    """
    res = __salt__["cmd.run_all"](["systemctl", *args], python_shell=False,
                                  ignore_retcode=not check)
    if check and res["retcode"] != 0:
        raise CommandExecutionError(f"systemctl {' '.join(args)} failed ({res['retcode']}): "
                                    f"{res['stderr'] or res['stdout']}")
    return res


def unit_state(unit):
    """
    ``{"exists", "enabled", "active", "label"}`` of a systemd unit; ``label`` reads
    e.g. ``enabled/active``, as the states report a unit's old state.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.unit_state libvirtd.service
    """
    # One systemctl call, not three: the states ask this for every libvirt unit each run.
    out = systemctl("show", "--property=LoadState,UnitFileState,ActiveState", unit,
                    check=False)["stdout"]
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    load = props.get("LoadState", "")
    enabled = props.get("UnitFileState", "").strip()
    active = props.get("ActiveState", "").strip()
    is_active = active == "active"
    return {"exists": load.strip() not in ("not-found", ""), "enabled": enabled,
            "active": is_active, "label": f"{enabled}/{'active' if is_active else 'inactive'}"}


def local_address(address):
    """
    Whether ``address`` is one of this node's own: a socket can bind to it. A side network's
    address (migration, storage) is configured by the site; the formula checks it is there
    before it listens or mounts over it.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.local_address 172.30.20.41
    """
    import socket  # pylint: disable=import-outside-toplevel

    fam = socket.AF_INET6 if ":" in str(address) else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(address), 0))
        except (OSError, ValueError):
            return False
    return True


def qemu_account():
    """
    The account QEMU runs as on this node (Debian's ``libvirt-qemu``, EL's ``qemu``) as
    ``{"name", "uid", "gid"}``, or None when libvirt has not made it.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_node.qemu_account
    """
    return __utils__["kvmcluster_volume.qemu_account"]()
