"""kvmcluster_pool and its state through Salt's loader against libvirt's test:///default."""
import uuid

import pytest

URI = "test:///default"


@pytest.fixture
def pool_name():
    return f"kvmtest-{uuid.uuid4().hex[:8]}"


def test_loader_finds_the_custom_modules(loaders):
    funcs, states, _ = loaders
    for fn in ("kvmcluster_model.load", "kvmcluster_pool.ensure", "kvmcluster_node.info",
               "kvmcluster_libvirt.conf_write", "kvmcluster_node.write_file"):
        assert fn in funcs
    for st in ("kvmcluster_pool.present", "kvmcluster_model.validated",
               "kvmcluster_libvirt.config_managed", "kvmcluster_preflight.checked"):
        assert st in states


def test_ensure_defines_starts_autostarts(loaders, pool_name, tmp_path):
    funcs, _, _ = loaders
    assert funcs["kvmcluster_pool.describe"](pool_name, uri=URI) == {"name": pool_name,
                                                                    "exists": False}
    steps = funcs["kvmcluster_pool.ensure"](pool_name, str(tmp_path), uri=URI)
    assert steps == ["defined", "started", "autostart set"]
    desc = funcs["kvmcluster_pool.describe"](pool_name, uri=URI)
    assert desc["exists"] and desc["active"] and desc["autostart"]
    assert (desc["type"], desc["target"]) == ("dir", str(tmp_path))
    assert funcs["kvmcluster_pool.ensure"](pool_name, str(tmp_path), uri=URI) == []


def test_ensure_redefines_a_drifted_target(loaders, pool_name, tmp_path):
    funcs, _, _ = loaders
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    funcs["kvmcluster_pool.ensure"](pool_name, str(old), uri=URI)
    steps = funcs["kvmcluster_pool.ensure"](pool_name, str(new), uri=URI)
    assert steps[:2] == ["undefined drifted definition", "defined"]
    assert funcs["kvmcluster_pool.describe"](pool_name, uri=URI)["target"] == str(new)


def test_netfs_pool_xml_round_trips(loaders):
    funcs, _, _ = loaders
    xml = funcs["kvmcluster_pool.pool_xml"]("secondary", "/mnt/secondary", "netfs",
                                            {"host": "172.30.10.41", "dir": "/data01/secondary"})
    assert '<host name="172.30.10.41" />' in xml and '<format type="nfs" />' in xml


def _state_run(make_loaders, parameters, path, pool_name, test):
    funcs, states, _ = make_loaders(test=test)
    funcs["kvmcluster_model.load"](parameters)
    view = funcs["kvmcluster_model.current"]()
    view["storage"]["primary"].update(path=path, name=pool_name)
    return states["kvmcluster_pool.present"]("pool", uri=URI)


def test_state_test_mode_matches_the_real_run(make_loaders, parameters, pool_name, tmp_path):
    # test:///default creates no directories; the target exists as on a built pool.
    target = tmp_path / "primary"
    target.mkdir()
    predicted = _state_run(make_loaders, parameters, str(target), pool_name, test=True)
    assert predicted["result"] is None, predicted
    assert set(predicted["changes"]) == {"defined", "active", "autostart"}
    assert funcs_describe(make_loaders, pool_name)["exists"] is False  # nothing touched
    applied = _state_run(make_loaders, parameters, str(target), pool_name, test=False)
    assert applied["result"] is True, applied
    assert applied["changes"] == predicted["changes"]
    again = _state_run(make_loaders, parameters, str(target), pool_name, test=False)
    assert (again["result"], again["changes"]) == (True, {})


def test_state_corrects_a_hand_changed_target(make_loaders, parameters, pool_name, tmp_path):
    (tmp_path / "right").mkdir()
    (tmp_path / "wrong").mkdir()
    funcs, _, _ = make_loaders()
    funcs["kvmcluster_pool.ensure"](pool_name, str(tmp_path / "wrong"), uri=URI)
    ret = _state_run(make_loaders, parameters, str(tmp_path / "right"), pool_name, test=False)
    assert ret["changes"] == {"target": {"old": str(tmp_path / "wrong"),
                                         "new": str(tmp_path / "right")}}
    assert "corrected drift in target" in ret["comment"]
    assert funcs_describe(make_loaders, pool_name)["target"] == str(tmp_path / "right")


def funcs_describe(make_loaders, name):
    return make_loaders()[0]["kvmcluster_pool.describe"](name, uri=URI)


def test_model_load_through_the_loader(loaders, parameters):
    funcs, _, context = loaders
    view = funcs["kvmcluster_model.load"](parameters)
    assert view["self"]["name"] == "kvm02"
    assert view["self"]["port"]["slaves"] == ["eno1", "eno2"]
    assert "kvmcluster_model.model" in context


def test_model_load_rejects_a_bad_pillar(loaders, parameters, minion_opts):
    funcs, _, _ = loaders
    bad = {"kvmcluster": dict(minion_opts["pillar"]["kvmcluster"], gateway="10.1.1.1")}
    funcs["kvmcluster_model.load"].__globals__["__pillar__"] = bad
    try:
        # This minion (kvm02) lists its own errors; the cluster's are listed by kvm01.
        with pytest.raises(Exception, match=r"\[kvm02\] kvmcluster:gateway: 10.1.1.1 is not "
                                            r"on-link(.|\n)*listed once, by kvm01"):
            funcs["kvmcluster_model.load"](parameters)
    finally:
        funcs["kvmcluster_model.load"].__globals__["__pillar__"] = minion_opts["pillar"]
