"""The cluster model: the seed's pillar is valid, and every bad pillar fails with its message."""
import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmtestlib import SEED_PILLAR, edit_pillar, formula_values, load_module

CASES = yaml.safe_load((Path(__file__).parents[1] / "data/bad_pillars.yaml").read_text())
model = load_module("_modules", "kvmcluster_model")
DEFAULTS = formula_values()["cluster"]
edit = edit_pillar


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c["name"] for c in CASES}) == len(CASES)


def test_seed_pillar_is_valid():
    built, errors = model.build(SEED_PILLAR["kvmcluster"], DEFAULTS)
    assert [str(e) for e in errors] == []
    assert sorted(built["nodes"]) == ["kvm01", "kvm02", "kvm03", "mgmt01", "mgmt02"]
    assert [n for n, v in built["nodes"].items() if not v["hypervisor"]] == ["mgmt01", "mgmt02"]
    assert not built["nodes"]["mgmt01"]["takeover"] and built["nodes"]["kvm01"]["takeover"]
    kvm01 = built["nodes"]["kvm01"]
    assert kvm01["address"] == "172.30.10.41/24"
    assert kvm01["port"]["kind"] == "bond" and kvm01["port"]["mode"] == "802.3ad"
    assert kvm01["bridge"] == {"name": "br0", "mtu": 9000, "stp": False, "forward_delay": 0}
    assert built["storage"]["secondary"]["server"] == "kvm01"
    # The hypervisors mount the share; the management nodes do not.
    assert built["storage"]["secondary"]["clients"] == [
        "172.30.10.41", "172.30.10.42", "172.30.10.43"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_pillar(case):
    built, errors = model.build(edit(SEED_PILLAR["kvmcluster"], case["set"]), DEFAULTS)
    lines = [str(e) for e in errors]
    assert built is None
    assert any(case["expect"] in line for line in lines), "\n".join(lines)


def test_all_errors_reported_at_once():
    bad = edit(SEED_PILLAR["kvmcluster"], {"gateway": "10.9.9.9", "nodes:kvm03:ip": "172.30.10.42/24",
                                           "bond:mode": "fast"})
    _, errors = model.build(bad, DEFAULTS)
    keys = {e.key for e in errors}
    assert {"kvmcluster:gateway", "kvmcluster:nodes:kvm03:ip", "kvmcluster:bond:mode"} <= keys


def test_own_os_family_checks_backend():
    pil = edit(SEED_PILLAR["kvmcluster"], {"network:backend": "ifcfg"})
    _, errors = model.build(pil, DEFAULTS, self_id="kvm02", self_os_family="Debian")
    assert [str(e) for e in errors] == [
        "[kvm02] kvmcluster:network:backend: backend ifcfg does not exist on Debian; "
        "valid there: ifupdown, netplan, networkmanager"]
    _, errors = model.build(pil, DEFAULTS, self_id="kvm02", self_os_family="RedHat")
    assert errors == []


def test_xmit_hash_policy_number_is_normalized():
    pil = edit(SEED_PILLAR["kvmcluster"], {"bond:xmit_hash_policy": 1})
    built, errors = model.build(pil, DEFAULTS)
    assert errors == []
    assert built["nodes"]["kvm02"]["port"]["xmit_hash_policy"] == "layer3+4"


def test_node_view_unknown_node():
    built, _ = model.build(SEED_PILLAR["kvmcluster"], DEFAULTS)
    with pytest.raises(model.CommandExecutionError, match="node 'kvm99' is not in pillar"):
        model.node_view(built, "kvm99")


# ---- property: any well-formed cluster validates and resolves every node ------------

names = st.lists(st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z"), min_size=1, max_size=12, unique=True)


@st.composite
def clusters(draw):
    prefix = draw(st.integers(min_value=16, max_value=28))
    base = draw(st.integers(min_value=0, max_value=2**32 - 1))
    net = ipaddress.ip_network((base >> (32 - prefix) << (32 - prefix), prefix))
    node_ids = draw(names)
    hosts = draw(st.lists(st.integers(min_value=1, max_value=net.num_addresses - 2),
                          min_size=len(node_ids) + 1, max_size=len(node_ids) + 1, unique=True))
    gw = net.network_address + hosts[0]
    nodes = {}
    for nid, h in zip(node_ids, hosts[1:]):
        entry = {"ip": f"{net.network_address + h}/{prefix}"}
        if draw(st.booleans()):
            entry["nic"] = draw(st.sampled_from(["eth0", "eno1", "ens3"]))
            entry["mtu"] = draw(st.integers(min_value=576, max_value=9216))
        else:
            entry["bond"] = {"slaves": draw(st.lists(st.sampled_from(["eno1", "eno2", "eno3"]),
                                                     min_size=1, max_size=3, unique=True)),
                             "mode": draw(st.sampled_from(sorted(model.HASHING_MODES)))}
        nodes[nid] = entry
    secondary = draw(st.booleans())
    pillar = {
        "subnets": [str(net)], "gateway": str(gw), "dns_servers": [str(gw)],
        "bond": {"miimon": draw(st.sampled_from([0, 50, 100]))},
        "nodes": nodes,
        "storage": {"primary": {"path": draw(st.sampled_from(["/data01/primary", "/srv/vm"]))},
                    "secondary": {"enabled": secondary, "server": node_ids[0],
                                  "export_path": "/export/secondary",
                                  "mountpoint": "/mnt/secondary"}},
    }
    return pillar


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_valid_models_build(pillar):
    built, errors = model.build(pillar, DEFAULTS)
    assert [str(e) for e in errors] == []
    assert set(built["nodes"]) == set(pillar["nodes"])
    for nid, n in built["nodes"].items():
        assert n["address"] == pillar["nodes"][nid]["ip"]
        assert n["bridge"]["mtu"] == n["port"]["mtu"]


def test_roster_from_the_model():
    model.__pillar__ = {"kvmcluster": SEED_PILLAR["kvmcluster"]}
    got = model.roster(parameters=formula_values(), priv="/root/.ssh/kvm")
    assert sorted(got) == ["kvm01", "kvm02", "kvm03", "mgmt01", "mgmt02"]
    assert got["kvm02"] == {"host": "172.30.10.42", "user": "kvmadmin", "sudo": True,
                            "priv": "/root/.ssh/kvm",
                            "set_path": "/usr/sbin:/usr/bin:/sbin:/bin",
                            "ssh_options": ["ControlMaster=auto",
                                            "ControlPath=~/.kvmcluster-ssh-%C",
                                            "ControlPersist=60"]}
    assert model.roster(parameters=formula_values(), user="root", reuse=False)["mgmt01"] == {
        "host": "172.30.10.11", "user": "root", "set_path": "/usr/sbin:/usr/bin:/sbin:/bin"}
    model.__pillar__ = {"kvmcluster": {"nodes": {"kvm01": {"ip": "x"}}}}
    with pytest.raises(model.CommandExecutionError, match="kvmcluster:nodes:kvm01:ip"):
        model.roster(parameters=formula_values())


def test_pillar_render_errors_come_first():
    model.__pillar__ = {"_errors": ["Rendering SLS 'kvmcluster' failed: mapping values are "
                                    "not allowed here; line 7"],
                        "kvmcluster": {"nodes": {}}}
    model.__context__ = {}
    got = model.validate(parameters=formula_values())
    assert got["valid"] is False and got["errors"] == [
        "[cluster] pillar: did not render, fix it first: \"Rendering SLS 'kvmcluster' failed: "
        "mapping values are not allowed here; line 7\""]
    assert model.__context__["retcode"] == 1
    model.__grains__ = {"id": "kvm02", "os_family": "Debian"}
    with pytest.raises(model.CommandExecutionError, match="did not render"):
        model.load(formula_values())


@pytest.mark.parametrize("wrap", ["dict", "loader"])
def test_render_errors_first_as_salt_hands_the_pillar(wrap):
    """Salt gives modules ``__pillar__`` as a loader context, not a dict: the render error
    must still come first (it was reported as "no subnets"), in validate, load and roster."""
    import salt.loader.context

    data = {"_errors": ["Rendering SLS 'kvmcluster' failed: could not find expected ':'"],
            "kvmcluster": {"nodes": {}}}
    model.__pillar__ = data if wrap == "dict" else \
        salt.loader.context.LoaderContext().named_context("__pillar__", data)
    model.__context__ = {}
    model.__grains__ = {"id": "kvm02", "os_family": "Debian"}
    got = model.validate(parameters=formula_values())
    assert got["errors"] == ["[cluster] pillar: did not render, fix it first: \"Rendering SLS "
                             "'kvmcluster' failed: could not find expected ':'\""]
    for call in (lambda: model.load(formula_values()),
                 lambda: model.roster(parameters=formula_values())):
        with pytest.raises(model.CommandExecutionError, match="^\\[cluster\\] pillar: did not "
                           "render") as exc:
            call()
        assert "subnets" not in str(exc.value)


def test_the_roster_written_ready_for_salt_ssh(tmp_path):
    """``path=``: the file salt-ssh reads, one entry per node at the top (no ``local:``
    wrapper as salt-call's output has), 0600."""
    model.__pillar__ = {"kvmcluster": SEED_PILLAR["kvmcluster"]}
    target = tmp_path / "roster"
    got = model.roster(parameters=formula_values(), path=str(target))
    assert got == {"written": str(target), "nodes": ["kvm01", "kvm02", "kvm03", "mgmt01",
                                                      "mgmt02"]}
    data = yaml.safe_load(target.read_text())
    assert sorted(data) == got["nodes"]
    assert data["kvm02"]["host"] == "172.30.10.42" and data["kvm02"]["sudo"] is True
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["roster"]
    with pytest.raises(model.CommandExecutionError, match="absolute path"):
        model.roster(parameters=formula_values(), path="roster")


def test_a_cluster_error_is_printed_once_in_a_run(model_mod, cluster_defaults):
    """The first node lists every error; the others their own and a count of the rest."""
    import copy

    from kvmtestlib import SEED_PILLAR

    bad = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    bad["nodes"]["kvm03"]["ip"] = "172.30.10.42/24"  # kvm02's
    bad["bond"] = {"mode": "802.3ab"}
    _, errors = model_mod.build(bad, cluster_defaults)
    teller = model_mod.teller(bad)
    assert teller == "kvm01"
    texts = {n: model_mod.format_errors(errors, n, teller) for n in ("kvm01", "kvm02", "kvm03")}
    cluster_line = "[cluster] kvmcluster:bond:mode: '802.3ab' is not a bonding mode"
    assert sum(cluster_line in t for t in texts.values()) == 1
    assert cluster_line in texts["kvm01"]
    assert "[kvm03] kvmcluster:nodes:kvm03:ip:" in texts["kvm03"]
    assert "[kvm03]" not in texts["kvm02"]
    for n in ("kvm02", "kvm03"):
        assert "listed once, by kvm01" in texts[n], texts[n]
        assert texts[n].startswith(f"kvmcluster pillar is invalid ({len(errors)} errors)")
    # Without a node list to choose from, every node lists everything.
    assert model_mod.teller({"nodes": "x"}) is None
    assert model_mod.format_errors(errors, "kvm02", None).count("\n  - ") == len(errors)
