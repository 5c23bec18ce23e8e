"""Helpers shared by the tiers: repository paths, the formula's defaults, the seed pillar."""
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def load_module(kind, name):
    """Import a custom Salt module from _modules/ or _states/ as a plain Python module."""
    path = REPO / kind / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kvmtest_{kind}_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    if kind != "_utils":
        # What Salt's loader gives every module: the repository's _utils (a test may
        # replace it with its own).
        mod.__utils__ = utils_dunder()
    return mod


def formula_values():
    return yaml.safe_load((REPO / "kvmcluster/parameters/defaults.yaml").read_text())["values"]


EXAMPLE_PILLAR = yaml.safe_load((REPO / "pillar.example").read_text()) \
    if (REPO / "pillar.example").exists() else None


def _over_node_addresses(example):
    """pillar.example with the share on the nodes' own addresses (no networks:storage):
    most tests of the export's clients, the firewall and the mounts start from there;
    test_storage_network.py starts from the example as it is."""
    if example is None:
        return None
    out = copy.deepcopy(example)
    out["kvmcluster"]["networks"]["storage"] = None
    for node in out["kvmcluster"]["nodes"].values():
        node.pop("storage_ip", None)
    return out


SEED_PILLAR = _over_node_addresses(EXAMPLE_PILLAR)


@pytest.fixture
def model_mod():
    return load_module("_modules", "kvmcluster_model")


@pytest.fixture
def cluster_defaults():
    return formula_values()["cluster"]


@pytest.fixture
def seed_pillar():
    return copy.deepcopy(SEED_PILLAR["kvmcluster"])


def utils_dunder():
    """``__utils__`` for a module loaded as plain Python: the public functions of the
    repository's _utils, named as Salt's loader names them."""
    import inspect

    out = {}
    for path in sorted((REPO / "_utils").glob("kvmcluster_*.py")):
        mod = load_module("_utils", path.stem)
        out.update({f"{path.stem}.{n}": f for n, f in vars(mod).items()
                    if not n.startswith("_") and inspect.isfunction(f)
                    and f.__module__ == mod.__name__})
    return out


def runner_over(runner, monkeypatch, tmp_path, call, call_model):
    """The kvmcluster runner with its node calls answered by ``call``/``call_model``, the
    repository's _utils, and its CA kept under tmp_path (never the master's pki_dir)."""
    monkeypatch.setattr(runner, "_call", call)
    monkeypatch.setattr(runner, "_call_model", call_model)
    runner.__utils__ = utils_dunder()
    runner.__opts__ = {"kvmcluster_ca_dir": str(tmp_path / "master" / "kvmcluster-ca")}
    (tmp_path / "master").mkdir()
    runner.__context__ = {}
    return runner


class NoClose:
    """A libvirt connection that ``close()`` leaves open: every call of a module under test
    shares one test-driver node, as the calls to one libvirtd would."""

    def __init__(self, conn):
        self._c = conn

    def close(self):
        pass

    def __getattr__(self, k):
        return getattr(self._c, k)


def fake_pubkey(tag, ktype="ssh-ed25519", comment=None):
    """A well-formed public key line (a body that decodes to a key of its type) made from
    ``tag``: the model parses keys, so a test's stand-in must be shaped like the real thing."""
    import base64
    import struct

    t = ktype.encode()
    body = (tag.encode() * 32)[:32]
    blob = struct.pack(">I", len(t)) + t + struct.pack(">I", 32) + body
    line = f"{ktype} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line


DELETE = "~DELETE~"


def edit_pillar(tree, changes):
    """A copy of ``tree`` with ``changes`` applied: colon-separated paths (as in Salt's
    pillar.get) to values; ``DELETE`` removes the key."""
    tree = copy.deepcopy(tree)
    for path, value in changes.items():
        keys = path.split(":")
        cur = tree
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        if value == DELETE:
            cur.pop(keys[-1], None)
        else:
            cur[keys[-1]] = value
    return tree


def visudo_run_all(argv, **_kw):
    """``cmd.run_all`` of ``visudo -c -q -f <file>``: the machine's visudo, or without sudo
    installed a stand-in that refuses what visudo refuses here."""
    import os
    import shutil
    import subprocess

    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    if not os.path.exists(visudo):
        text = open(argv[-1], encoding="utf-8").read()
        ok = all(ln.startswith("#") or " ALL=(ALL:ALL) NOPASSWD: ALL" in ln
                 for ln in text.splitlines() if ln)
        return {"retcode": 0 if ok else 1, "stdout": "", "stderr": "syntax error"}
    res = subprocess.run([visudo, *argv[1:]], capture_output=True, text=True, check=False)
    return {"retcode": res.returncode, "stdout": res.stdout, "stderr": res.stderr}
