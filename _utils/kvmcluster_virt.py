"""
The libvirt binding and connections, shared by the kvmcluster modules that talk to libvirt
(``__utils__["kvmcluster_virt.connect"](uri)``).
"""
import importlib
import sys

from salt.exceptions import CommandExecutionError


def binding():
    """The ``libvirt`` module, or CommandExecutionError naming the fix."""
    # The binding may have been installed earlier in this same run: look again.
    importlib.invalidate_caches()
    try:
        libvirt = importlib.import_module("libvirt")
    except ImportError as exc:
        raise CommandExecutionError(
            f"the libvirt Python binding is not importable by Salt's interpreter "
            f"({sys.executable}): install python3-libvirt for it (on onedir minions: "
            f"salt-pip install libvirt-python)") from exc
    # libvirt prints every error on stderr besides raising it. The exception carries it;
    # on stderr it is noise, and salt-ssh takes a "Permission denied" there for a failed
    # login and drops the node's whole result.
    libvirt.registerErrorHandler(_quiet, None)
    return libvirt


def _quiet(_ctx, _err):
    """libvirt's error callback: say nothing (the raised libvirtError says it)."""


def connect(uri):
    """An open connection to ``uri``; the caller closes it."""
    libvirt = binding()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"cannot connect to libvirt at {uri}: {exc}") from exc
