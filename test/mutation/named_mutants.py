"""Six hand-made mutations of the network transaction engine, each applied to a copy of the tree; the fast tests
must fail on every one (run: make mutation; commits of HEAD only)."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
SRC = pathlib.Path(__file__).resolve().parents[2]
MUTS = {
    "_restore does nothing": ("def _restore(txn, spec):\n", "def _restore(txn, spec):\n    return\n"),
    "confirm leaves the timer armed": ("        _stop_timers(t)\n        t.set_phase(\"confirmed\", \"confirmed by the management node\"",
                                       "        t.set_phase(\"confirmed\", \"confirmed by the management node\""),
    "check passes when the bridge lacks the address": ("        if lacking:\n            reason", "        if False:\n            reason"),
    "restore keeps the new files": ("    _write_files(spec, \"old\")\n    if b == \"networkmanager\":", "    if b == \"networkmanager\":"),
    "rollback forgets the default route": ("            if r.get(\"gateway\") and r.get(\"dev\") in present:\n                _run([\"ip\", fam, \"route\", \"replace\", \"default\"",
                                           "            if False:\n                _run([\"ip\", fam, \"route\", \"replace\", \"default\""),
    "boot-time rollback skips a pending transaction": ("        if ph in FINAL:\n            continue\n        with t.lock():",
                                                       "        if True:\n            continue\n        with t.lock():"),
}
rows = []
for name, (old, new) in MUTS.items():
    work = pathlib.Path(tempfile.mkdtemp(prefix="kvmcluster-mutant-"))
    p1 = subprocess.Popen(["git", "-C", str(SRC), "archive", "HEAD"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(work)], stdin=p1.stdout, check=True)
    p1.wait()
    f = work / "_modules/kvmcluster_nettxn.py"
    text = f.read_text()
    assert text.count(old) == 1, (name, text.count(old))
    f.write_text(text.replace(old, new))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test/unit/test_nettxn_engine.py"], cwd=work, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH="test",
                                             PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"))
    last = res.stdout.strip().splitlines()[-1]
    rows.append((name, "KILLED" if res.returncode else "SURVIVED", last))
    shutil.rmtree(work, ignore_errors=True)
for r in rows:
    print(" | ".join(r))
sys.exit(any(r[1] == "SURVIVED" for r in rows))
