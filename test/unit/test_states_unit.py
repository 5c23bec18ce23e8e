"""State logic with mocked execution modules (pytest-salt-factories loader mocks).

Fast first tier: compliant → no changes; test=True → result None with the same changes the
real run reports; failures carry the reason.
"""
import copy
from unittest.mock import MagicMock

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module, utils_dunder

model = load_module("_modules", "kvmcluster_model")
pool_state = load_module("_states", "kvmcluster_pool")
model_state = load_module("_states", "kvmcluster_model")
preflight = load_module("_states", "kvmcluster_preflight")
sysctl_state = load_module("_states", "kvmcluster_sysctl")

BUILT, _ = model.build(SEED_PILLAR["kvmcluster"], formula_values()["cluster"])
VIEW = model.node_view(BUILT, "kvm02")


@pytest.fixture
def pool_describe():
    return MagicMock(return_value={"exists": False, "name": "default"})


@pytest.fixture
def configure_loader_modules(pool_describe):
    return {
        pool_state: {
            "__salt__": {"kvmcluster_model.current": lambda: copy.deepcopy(VIEW),
                         "kvmcluster_pool.describe": pool_describe,
                         "kvmcluster_pool.ensure": MagicMock(return_value=["defined"])},
            "__opts__": {"test": False},
            "__utils__": utils_dunder(),
        },
        model_state: {"__salt__": {}, "__opts__": {"test": False}},
    }


def test_pool_compliant_reports_nothing(pool_describe, tmp_path):
    view = copy.deepcopy(VIEW)
    view["storage"]["primary"]["path"] = str(tmp_path)
    pool_describe.return_value = {"exists": True, "type": "dir", "target": str(tmp_path),
                                  "source": None, "active": True, "autostart": True}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(pool_state.__salt__, "kvmcluster_model.current", lambda: view)
        ret = pool_state.present("p")
    assert ret["result"] is True and ret["changes"] == {}


def test_pool_test_mode_predicts_the_changes(pool_describe):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(pool_state.__opts__, "test", True)
        predicted = pool_state.present("p")
    assert predicted["result"] is None
    assert set(predicted["changes"]) == {"defined", "built", "active", "autostart"}
    pool_state.__salt__["kvmcluster_pool.ensure"].assert_not_called()


def test_pool_drift_is_reported(pool_describe):
    pool_describe.return_value = {"exists": True, "type": "dir", "target": "/var/lib/libvirt/images",
                                  "source": None, "active": True, "autostart": True}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(pool_state.__opts__, "test", True)
        ret = pool_state.present("p")
    assert ret["changes"]["target"] == {"old": "/var/lib/libvirt/images", "new": "/data01/primary"}
    assert "drift from the model in target" in ret["comment"]


def test_pool_still_wrong_after_apply_fails(pool_describe):
    # ensure() claims success but the pool reads back undefined: the state must not lie.
    ret = pool_state.present("p")
    assert ret["result"] is False
    assert "still differs" in ret["comment"]


def test_validated_state_fails_with_every_error():
    err = model.CommandExecutionError(model.format_errors([
        model.ModelError("kvm02", "kvmcluster:nodes:kvm02:ip", "bad")]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(model_state.__salt__, "kvmcluster_model.load", MagicMock(side_effect=err))
        ret = model_state.validated("v", parameters={})
    assert ret["result"] is False
    assert "[kvm02] kvmcluster:nodes:kvm02:ip: bad" in ret["comment"]


def test_mountpoint_lookup(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:30 / /data01 rw - ext4 /dev/vdb rw\n"
        "31 22 0:31 / /data011 rw - ext4 /dev/vdc rw\n")
    assert preflight._mountpoint("/data01/primary", str(info)) == "/data01"
    assert preflight._mountpoint("/data011/x", str(info)) == "/data011"
    assert preflight._mountpoint("/srv/primary", str(info)) == "/"


def test_sysctl_render_skips_nulls():
    text = sysctl_state._render({"vm.swappiness": 10, "net.core.somaxconn": None})
    assert "vm.swappiness = 10" in text
    assert "somaxconn" not in text


@pytest.mark.parametrize("warns", [[], ["nftables runs, not firewalld"]])
def test_preflight_reports_warnings_only_when_there_are_some(monkeypatch, warns):
    """Salt's outputter prints a bare "Warnings:" header for an empty list."""
    monkeypatch.setattr(preflight, "__salt__", {"kvmcluster_model.current":
                                                lambda: copy.deepcopy(VIEW)}, raising=False)
    monkeypatch.setattr(preflight, "_checks", lambda view: ([], list(warns), {"os": "Debian"}))
    ret = preflight.checked("kvmcluster-prereqs-preflight")
    assert ret["result"] is True
    assert ("warnings" in ret) is bool(warns)
    if warns:
        assert ret["warnings"] == warns and "WARN: nftables runs" in ret["comment"]
