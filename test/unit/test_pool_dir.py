"""kvmcluster_pool's own directory making: root makes a dir pool's directory (mode 0711, as
libvirt would) and, under SELinux, has it labelled before libvirtd opens it (libvirtd may
not create a directory under a parent of no type of its own, e.g. default_t)."""
import os

from kvmtestlib import load_module

pool = load_module("_modules", "kvmcluster_pool")


def _run(mod, selinux, monkeypatch, path):
    ran = []
    real_exists = os.path.exists
    monkeypatch.setattr(mod.os.path, "exists", lambda p: selinux if p ==
                        "/sys/fs/selinux/enforce" else real_exists(p))
    mod.__salt__ = {"cmd.run_all": lambda argv, **kw: ran.append(argv) or
                    {"retcode": 0, "stdout": "", "stderr": ""}}
    mod._make_dir(str(path))
    return ran


def test_under_selinux_the_new_directory_is_labelled(monkeypatch, tmp_path):
    path = tmp_path / "data01" / "primary"
    ran = _run(pool, True, monkeypatch, path)
    assert path.is_dir() and oct(path.stat().st_mode & 0o777) == "0o711"
    assert ran == [["restorecon", "-R", str(path)]]


def test_without_selinux_nothing_is_run(monkeypatch, tmp_path):
    path = tmp_path / "primary"
    assert _run(pool, False, monkeypatch, path) == [] and path.is_dir()
