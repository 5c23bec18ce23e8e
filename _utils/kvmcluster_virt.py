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
        return importlib.import_module("libvirt")
    except ImportError as exc:
        raise CommandExecutionError(
            f"the libvirt Python binding is not importable by Salt's interpreter "
            f"({sys.executable}): install python3-libvirt for it (on onedir minions: "
            f"salt-pip install libvirt-python)") from exc


def connect(uri):
    """An open connection to ``uri``; the caller closes it."""
    libvirt = binding()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"cannot connect to libvirt at {uri}: {exc}") from exc
