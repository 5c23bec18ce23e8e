"""Hostile pillar values are refused before anything is touched, each with a message that
names the node and the key; none gets into the model."""
import copy
from pathlib import Path

import pytest
import yaml

from kvmtestlib import SEED_PILLAR, edit_pillar, formula_values, load_module

CASES = yaml.safe_load((Path(__file__).parents[1] / "data/hostile_pillars.yaml").read_text())
model = load_module("_modules", "kvmcluster_model")
DEFAULTS = formula_values()["cluster"]


edit = edit_pillar


def test_the_corpus_covers_every_class():
    assert len(CASES) >= 60
    assert len({c["name"] for c in CASES}) == len(CASES)
    classes = {c["class"] for c in CASES}
    assert {"address", "name", "export", "path", "boolean", "mode", "ssh-key", "account",
            "lookup"} <= classes


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_hostile_value_is_refused_naming_node_and_key(case):
    pillar = edit(SEED_PILLAR["kvmcluster"], case["set"])
    built, errors = model.build(pillar, DEFAULTS, self_id="kvm02", self_os_family="Debian")
    lines = [str(e) for e in errors]
    assert built is None, f"accepted: {case['set']!r}"
    assert any(line.startswith(case["expect"]) for line in lines), lines
    assert len(lines) == len(set(lines)), lines  # each reason said once
    for line in lines:
        assert model.INTERNAL not in line
        # A message is one line: a hostile value is quoted with its escapes, never raw.
        assert "\n" not in line and "\u2028" not in line and "\x85" not in line, line


def test_canonical_values_are_what_the_model_keeps():
    pillar = edit(SEED_PILLAR["kvmcluster"], {
        "nodes:kvm02:ip6": "FD00:30:10:0:0:0:0:42/64", "gateway6": "FD00:30:10::1",
        "dns:upstream": ["2001:DB8::53"], "dns:records:gw6": "FD00:30:10::0:1",
        "dhcp:hosts:golden-builder:mac": "52:54:00:10:00:0A",
        "storage:secondary:clients": ["172.30.10.41/32", "172.30.10.40/30"],
    })
    built, errors = model.build(pillar, DEFAULTS)
    assert [str(e) for e in errors] == []
    assert built["nodes"]["kvm02"]["address6"] == ["fd00:30:10::42/64"]
    assert built["nodes"]["kvm02"]["gateway6"] == "fd00:30:10::1"
    assert built["dns"]["upstream"] == ["2001:db8::53"]
    assert built["dns"]["records"]["gw6"] == "fd00:30:10::1"
    assert built["dhcp"]["hosts"]["golden-builder"]["mac"] == "52:54:00:10:00:0a"
    assert built["storage"]["secondary"]["clients"] == ["172.30.10.41", "172.30.10.40/30"]


def test_keys_are_kept_canonical_and_whole():
    key = SEED_PILLAR["kvmcluster"]["account"]["ssh_keys"][0]
    pillar = edit(SEED_PILLAR["kvmcluster"], {"account:ssh_keys": [f"  {key}  \n"]})
    built, errors = model.build(pillar, DEFAULTS)
    assert [str(e) for e in errors] == []
    assert built["account"]["ssh_keys"] == [key]


@pytest.mark.parametrize("ids", [
    {101: "mgmt02"},          # YAML reads 101: as an integer
    {"101": "mgmt02"},
])
def test_node_ids_of_any_scalar_type(ids):
    pillar = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    (new, old), = ids.items()
    pillar["nodes"][new] = pillar["nodes"].pop(old)
    built, errors = model.build(pillar, DEFAULTS, self_id="101", self_os_family="Debian")
    assert [str(e) for e in errors] == []
    assert "101" in built["nodes"]
    assert model.node_view(built, "101")["self"]["ip"] == "172.30.10.12"


@pytest.mark.parametrize("key", [True, None, 1.5, (1, 2)])
def test_node_ids_that_are_not_ids_are_named(key):
    pillar = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    pillar["nodes"][key] = pillar["nodes"].pop("mgmt02")
    built, errors = model.build(pillar, DEFAULTS)
    assert built is None
    assert any("a node id is its minion id" in str(e) and str(e).startswith("[cluster] "
               "kvmcluster:nodes:") for e in errors), [str(e) for e in errors]


def test_the_same_node_id_twice_is_named():
    pillar = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    pillar["nodes"][101] = pillar["nodes"]["mgmt02"]
    pillar["nodes"]["101"] = pillar["nodes"].pop("mgmt02")
    built, errors = model.build(pillar, DEFAULTS)
    assert built is None
    assert any(str(e).startswith("[101] kvmcluster:nodes:101: this node id is given twice")
               for e in errors), [str(e) for e in errors]
