"""_utils/kvmcluster_virt.py: the one way to the libvirt binding. Its errors are raised and
never printed: salt-ssh takes a "Permission denied" on a node's stderr for a failed login
and drops the node's whole result."""
import contextlib
import os

import pytest

from kvmtestlib import load_module

libvirt = pytest.importorskip("libvirt")
virt = load_module("_utils", "kvmcluster_virt")


@contextlib.contextmanager
def stderr_to(path):
    """File descriptor 2 (where libvirt's C code prints) into ``path`` for a while."""
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def lookup_missing_pool():
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError, match="no-such-pool"):
            conn.storagePoolLookupByName("no-such-pool")
    finally:
        conn.close()


def test_a_libvirt_error_is_raised_and_nothing_is_printed(tmp_path):
    virt.binding()
    with stderr_to(tmp_path / "err"):
        lookup_missing_pool()
    assert (tmp_path / "err").read_text() == ""


def test_without_the_quiet_handler_libvirt_prints_its_error(tmp_path):
    """The test above can fail: libvirt's default handler prints on stderr."""
    libvirt.registerErrorHandler(None, None)
    try:
        with stderr_to(tmp_path / "err"):
            lookup_missing_pool()
        assert "no-such-pool" in (tmp_path / "err").read_text()
    finally:
        virt.binding()
