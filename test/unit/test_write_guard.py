"""The fast tiers' guard (test/conftest.py): a test that writes outside its temporary
roots fails, naming the write; one that stays inside passes. Run as a separate pytest on
a copy of the guard, so that the escaping write lands in this test's own tmp_path."""
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

ESCAPING = '''
import os


def test_inside(tmp_path):
    (tmp_path / "ok").write_text("x")


def test_outside():
    with open(os.environ["OUTSIDE"], "w", encoding="utf-8") as fh:
        fh.write("x")


def test_outside_by_mkdir_and_rename(tmp_path):
    (tmp_path / "a").write_text("x")
    os.rename(tmp_path / "a", os.environ["OUTSIDE"] + ".moved")
'''


def test_a_write_outside_the_temporary_roots_fails_the_test(tmp_path):
    inner = tmp_path / "inner"
    (inner / "test" / "unit").mkdir(parents=True)
    for name in ("conftest.py", "kvmtestlib.py"):
        shutil.copy(HERE / name, inner / "test" / name)
    (inner / "test" / "unit" / "test_escape.py").write_text(ESCAPING)
    outside = tmp_path / "outside"
    outside.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "no:salt-factories-event-listener", "-p", "no:salt-factories-log-server", "--rootdir",
         str(inner), "--basetemp", str(tmp_path / "base"), "test/unit/test_escape.py"],
        cwd=inner, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(inner / "test"),
             "OUTSIDE": str(outside / "file")}, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    # The errors are the two escaping tests' (at their teardown); the third is clean.
    assert "2 errors" in out and "::test_inside" not in out, out[-3000:]
    assert f"open {outside / 'file'}" in out, out[-3000:]
    assert f"os.rename {outside / 'file'}.moved" in out, out[-3000:]
