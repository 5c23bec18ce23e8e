"""Where the lab keeps its image cache and its running state."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The image cache outlives a lab: building it is the slow part (debootstrap + apt).
CACHE = Path(os.environ.get("KVMCLUSTER_LAB_CACHE", "/var/cache/kvmcluster-lab"))
# Everything a running lab owns lives here; `down` removes it.
HOME = Path(os.environ.get("KVMCLUSTER_LAB_HOME", "/var/lib/kvmcluster-lab"))
STATE_FILE = HOME / "state.json"
# Bound into every container node at /mnt/secondary: the site-mounted shared storage.
SHARED = HOME / "shared"
SHARED_MOUNT = "/mnt/secondary"
SSH_KEY = CACHE / "ssh" / "id_ed25519"
# What the formula ships: an operator's file_roots entry holds these and nothing else.
# Pointing file_roots at the repository itself would make Salt's fileserver walk the
# virtualenv and the tests on every run (13,000 files here: seconds of CPU per node).
FORMULA_DIRS = ("kvmcluster", "_modules", "_states", "_runners", "_utils")


def formula_root(where):
    """A file_roots entry holding the formula only (symlinks into this checkout: a link
    left by another checkout, a CI clone's or a developer's, is pointed here again)."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    for name in FORMULA_DIRS:
        link, target = where / name, REPO_ROOT / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return where
