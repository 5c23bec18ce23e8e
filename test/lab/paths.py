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
