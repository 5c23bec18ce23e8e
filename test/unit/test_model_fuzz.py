"""The validator never raises: any YAML-representable value at any key path of the schema
(or in place of the whole pillar) gives errors or a model, never an exception, and every
message quotes a bounded part of the value."""
import copy
import os
import random

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kvmtestlib import SEED_PILLAR, formula_values, load_module

model = load_module("_modules", "kvmcluster_model")
# Seeded per run and printed (pytest -s, or the failure report): KVMCLUSTER_FUZZ_SEED=<n>
# replays a run. No example database: a failure of one run never haunts the next.
SEED = int(os.environ.get("KVMCLUSTER_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
print(f"model fuzz seed: {SEED} (KVMCLUSTER_FUZZ_SEED={SEED} replays it)")
DEFAULTS = formula_values()["cluster"]


def _paths(tree, prefix=()):
    for k, v in tree.items():
        yield prefix + (k,)
        if isinstance(v, dict) and k not in model.OPEN_MAPS:
            yield from _paths(v, prefix + (k,))


def schema_paths():
    """Every key path the schema knows, the node keys of each node included."""
    out = [p for p in _paths(DEFAULTS)]
    out += [("sysctl", "vm.swappiness"), ("sysctl", "net.core.somaxconn")]
    for node in ("kvm01", "kvm02", "mgmt01", "new-node"):
        out.append(("nodes", node))
        out += [("nodes", node, k) for k in sorted(model.NODE_KEYS)]
        out += [("nodes", node, "bond", k) for k in sorted(model.NODE_BOND_KEYS)]
        out += [("nodes", node, "bridge", k) for k in sorted(model.NODE_BRIDGE_KEYS)]
    return out


PATHS = schema_paths()

# What YAML can carry: scalars of every kind (huge and non-ASCII strings included), lists,
# mappings, nested.
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.text(min_size=300, max_size=2000)
           | st.sampled_from(["", "-", "172.30.10.41/24", "fd00::1/64", "eth0", "br0",
                              "\u212avm02", "kvm02\n", "a;b", "/data01", "0770", "auto"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
                      max_leaves=12)

BASE = SEED_PILLAR["kvmcluster"]
# A second base with shared storage and IPv6 on, so those branches are reached too.
BASE_FULL = copy.deepcopy(BASE)
BASE_FULL["storage"] = {"secondary": {"enabled": True, "server": "kvm01"}}
BASE_FULL["nodes"]["kvm02"]["ip6"] = "fd00:30:10::42/64"
BASE_FULL["gateway6"] = "fd00:30:10::1"


def put(tree, path, value):
    cur = tree
    for k in path[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[path[-1]] = value


def check(pillar):
    print(f"model fuzz seed: {SEED}")  # shown with a failure's captured output
    built, errors = model.build(pillar, DEFAULTS, self_id="kvm02", self_os_family="Debian")
    assert isinstance(errors, list)
    assert (built is None) == bool(errors)
    for e in errors:
        assert model.INTERNAL not in e.reason, str(e)
        # The value quoted in a message is cut to ~80 characters.
        assert len(e.reason) < 600, str(e)[:300]
    return built, errors


@seed(SEED)
@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from([BASE, BASE_FULL]), st.lists(st.tuples(st.sampled_from(PATHS), values),
                                                    min_size=1, max_size=3))
def test_any_value_at_any_key_path(base, edits):
    pillar = copy.deepcopy(base)
    for path, value in edits:
        put(pillar, path, value)
    check(pillar)


@seed(SEED)
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_value_as_the_whole_pillar(value):
    check(value)


def test_paths_cover_the_schema():
    # Every section of the defaults is fuzzed, down to the leaves.
    assert ("storage", "secondary", "pool", "type") in PATHS
    assert ("libvirt", "tls", "enabled") in PATHS
    assert ("nodes", "kvm02", "bond", "slaves") in PATHS
    assert len(PATHS) > 120


def test_ipv4_ipv6_and_dual_stack_validate():
    v6 = copy.deepcopy(BASE)
    v6["subnets"] = ["fd00:30:10::/64"]
    v6["gateway"] = "fd00:30:10::1"
    v6["dns_servers"] = ["fd00:30:10::44"]  # mgmt01 below
    v6["dhcp"] = {"range": ["fd00:30:10::200", "fd00:30:10::2ff"],
                  "hosts": {"golden-builder": {"mac": "52:54:00:10:00:01",
                                               "ip": "fd00:30:10::101"}}}
    for i, vm in enumerate(v6.get("vms", {}).values()):
        if vm.get("ip"):
            vm["ip"] = f"fd00:30:10::{0x111 + i:x}"
    for i, (_name, node) in enumerate(sorted(v6["nodes"].items())):
        node["ip"] = f"fd00:30:10::{0x41 + i:x}/64"
        for key in ("gateway", "dns_servers", "ip6", "gateway6"):  # IPv4 keys, or IPv6 twice
            node.pop(key, None)
    built, errors = check(v6)
    assert [str(e) for e in errors] == []
    full = copy.deepcopy(v6)
    full["storage"] = {"secondary": {"enabled": True, "server": "kvm01"}}
    built, errors = check(full)
    assert [str(e) for e in errors] == []
    assert all(":" in c for c in built["storage"]["secondary"]["clients"])
    built, errors = check(BASE_FULL)
    assert [str(e) for e in errors] == []
    assert built["nodes"]["kvm02"]["address6"] == ["fd00:30:10::42/64"]
