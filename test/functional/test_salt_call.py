"""The formula through a real ``salt-call --local``: what Salt's loader exposes as states, and
the requisites that replace failhard (every state of the formula behind the model and the
preflight, so a failed check stops kvmcluster on that node and nothing else)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.paths import formula_root

from kvmtestlib import REPO, SEED_PILLAR

SALT_CALL = str(Path(sys.executable).parent / "salt-call")

STATES = [
    "kvmcluster_account.present", "kvmcluster_dns.served", "kvmcluster_firewall.managed",
    "kvmcluster_libvirt.config_managed", "kvmcluster_libvirt.python_binding",
    "kvmcluster_libvirt.restarted", "kvmcluster_libvirt.running",
    "kvmcluster_libvirt.sockets_managed", "kvmcluster_migration.transport",
    "kvmcluster_model.validated",
    "kvmcluster_network.boot_guard", "kvmcluster_network.bridged",
    "kvmcluster_network.libvirt_network", "kvmcluster_nfs.exported",
    "kvmcluster_nfs.mounted", "kvmcluster_nfs.packages", "kvmcluster_node.reported",
    "kvmcluster_packages.installed", "kvmcluster_pool.present",
    "kvmcluster_preflight.checked", "kvmcluster_security.apparmor_paths",
    "kvmcluster_security.selinux_contexts", "kvmcluster_sysctl.dropin_managed",
    "kvmcluster_vm.filter_defined", "kvmcluster_vm.managed",
]


def minion_root(root, pillar_text):
    """A ``salt-call --local`` configuration under ``root``: the repository's modules, the
    formula in file_roots, ``pillar_text`` as the kvmcluster pillar file."""
    conf = {
        "file_client": "local", "root_dir": str(root), "cachedir": str(root / "cache"),
        "pki_dir": str(root / "pki"), "log_file": str(root / "log"), "id": "kvm02",
        "module_dirs": [str(REPO / "_modules")], "states_dirs": [str(REPO / "_states")],
        "utils_dirs": [str(REPO / "_utils")],
        "file_roots": {"base": [str(formula_root(root / "formula"))]},
        "pillar_roots": {"base": [str(root / "pillar")]},
    }
    (root / "pillar").mkdir()
    (root / "pillar" / "top.sls").write_text("base:\n  '*':\n    - kvmcluster\n")
    (root / "pillar" / "kvmcluster.sls").write_text(pillar_text)
    (root / "minion").write_text(yaml.safe_dump(conf))
    return root


@pytest.fixture(scope="module")
def salt_call(tmp_path_factory):
    root = minion_root(tmp_path_factory.mktemp("salt-call"), yaml.safe_dump(SEED_PILLAR))

    def call(*args):
        res = subprocess.run([SALT_CALL, "--local", f"--config-dir={root}", "--out=json", *args],
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)["local"]

    return call


def test_only_real_states_are_exposed(salt_call):
    assert salt_call("sys.list_state_functions", "kvmcluster_*") == STATES


def _requires(low):
    out = set()
    for req in low.get("require", []):
        for mod, ident in req.items():
            if mod == "sls":
                continue
            out.add(ident)
    return out


def test_every_state_is_behind_the_model_and_the_preflight(salt_call):
    chunks = salt_call("state.show_low_sls", "kvmcluster")
    assert not any(c.get("failhard") for c in chunks)
    graph = {c["__id__"]: _requires(c) for c in chunks}

    def reaches(ident, target, seen=()):
        return target in graph.get(ident, ()) or any(
            reaches(r, target, seen + (ident,)) for r in graph.get(ident, ()) if r not in seen)

    ids = sorted(graph)
    assert len(ids) >= 18, ids
    for ident in ids:
        if ident != "kvmcluster-model-validated":
            assert reaches(ident, "kvmcluster-model-validated"), ident
        if ident not in ("kvmcluster-model-validated", "kvmcluster-prereqs-preflight-checked"):
            assert reaches(ident, "kvmcluster-prereqs-preflight-checked"), ident


def test_a_pillar_that_did_not_render_is_reported_first(tmp_path):
    """Real salt-call, real pillar rendering: a YAML error in the pillar file is what the
    operator reads (not "no subnets"), from validate and from the state run, and no state of
    the formula runs."""
    text = yaml.safe_dump(SEED_PILLAR).replace("  subnets:\n", "  subnets: [\n", 1)
    root = minion_root(tmp_path, text)
    base = [SALT_CALL, "--local", f"--config-dir={root}", "--out=json"]
    res = subprocess.run([*base, "kvmcluster_model.validate"], capture_output=True, text=True,
                         timeout=300, check=False)
    got = json.loads(res.stdout)["local"]
    assert res.returncode != 0 and got["valid"] is False
    assert got["errors"][0].startswith("[cluster] pillar: did not render, fix it first:"), got
    assert not any("subnets" in e and "did not render" not in e for e in got["errors"])
    res = subprocess.run([*base, "state.sls_id", "kvmcluster-model-validated", "kvmcluster"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0
    assert "subnets" not in res.stdout.split("did not render")[0], res.stdout[-1500:]
