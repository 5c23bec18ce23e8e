"""The pillar reference (docs/pillar.rst) is generated from _utils/kvmcluster_schema.py and
the defaults, and agrees with the model's key sets, its ranges and both pillar examples."""
import re
import subprocess
import sys

import pytest
import yaml

from kvmtestlib import REPO, formula_values, load_module

schema = load_module("_utils", "kvmcluster_schema")
model = load_module("_modules", "kvmcluster_model")
DEFAULTS = formula_values()["cluster"]
OPEN = set(schema.OPEN)


def _leaves(data, prefix=""):
    """Key paths of ``data``: open mappings collapse to their placeholder."""
    out = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in OPEN:
            out.add(path)
        elif isinstance(value, dict) and value:
            out |= _leaves(value, path + ":")
        else:
            out.add(path)
    return out


def _schema_paths():
    """What the model accepts: the defaults' leaves, then the key sets of open mappings."""
    paths = _leaves(DEFAULTS) - OPEN | {"lookup", "sysctl:<key>", "dns:records:<name>"}
    paths |= {f"dhcp:hosts:<name>:{k}" for k in ("mac", "ip")}
    paths |= {f"images:<name>:{k}" for k in model.IMAGE_KEYS}
    paths |= {f"vms:<name>:{k}" for k in model.VM_KEYS}
    node = set(model.NODE_KEYS) - {"bond", "bridge"}
    paths |= {f"nodes:<id>:{k}" for k in node}
    paths |= {"nodes:<id>:bond:slaves", "nodes:<id>:bond:<key>", "nodes:<id>:bridge:<key>"}
    return paths


def test_every_key_the_model_accepts_is_documented_once():
    documented = schema.documented_paths()
    assert len(documented) == len(set(documented)), "a key documented twice"
    assert set(documented) == _schema_paths(), (
        f"undocumented: {sorted(_schema_paths() - set(documented))}; "
        f"documented but not in the schema: {sorted(set(documented) - _schema_paths())}")


def test_the_page_is_generated_from_the_schema():
    res = subprocess.run([sys.executable, str(REPO / "docs/gen_pillar.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (REPO / "docs/pillar.rst").read_text()
    for path in schema.documented_paths():
        assert f"``{path}``\n" in page, path


def test_defaults_on_the_page_are_the_formulas():
    page = (REPO / "docs/pillar.rst").read_text()
    assert "``storage:primary:path``\n    *path*; default ``/data01/primary``." in page
    assert "``network:rollback_timeout``\n    *seconds 30-3600*; default ``90``." in page
    assert "``migration:ports``\n    *[first, last]*; default ``[49152, 49215]``." in page


def _placeholders(paths, data, prefix=""):
    """pillar.example's key paths with the names of open mappings as placeholders."""
    holders = {"nodes": "<id>", "vms": "<name>", "images": "<name>", "dhcp:hosts": "<name>",
               "dns:records": "<name>", "sysctl": "<key>"}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path == "lookup":
            paths.add(path)
        elif path in holders:
            for sub in value.values():
                if isinstance(sub, dict) and path not in ("sysctl", "dns:records"):
                    _placeholders(paths, sub, f"{path}:{holders[path]}:")
                else:
                    paths.add(f"{path}:{holders[path]}")
        elif isinstance(value, dict) and value and not path.endswith((":bond", ":bridge")):
            _placeholders(paths, value, path + ":")
        elif path.endswith((":bond", ":bridge")) and path.startswith("nodes:"):
            for k in value:
                paths.add(f"{path}:{k}" if k == "slaves" else f"{path}:<key>")
        else:
            paths.add(path)
    return paths


def test_pillar_example_shows_every_key():
    example = yaml.safe_load((REPO / "pillar.example").read_text())["kvmcluster"]
    shown = _placeholders(set(), example)
    missing = set(schema.documented_paths()) - shown
    assert not missing, f"pillar.example lacks: {sorted(missing)}"
    unknown = shown - set(schema.documented_paths())
    assert not unknown, f"pillar.example has keys the reference lacks: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["pillar.example", "pillar.minimal.example"])
def test_both_examples_validate(name):
    data = yaml.safe_load((REPO / name).read_text())["kvmcluster"]
    _, errors = model.build(data, DEFAULTS)
    assert [str(e) for e in errors] == []


def test_the_minimal_example_is_small():
    data = yaml.safe_load((REPO / "pillar.minimal.example").read_text())["kvmcluster"]
    assert len(_leaves(data)) <= 12, sorted(_leaves(data))


RANGE = re.compile(r"outside (\d+)-(\d+)")


@pytest.mark.parametrize("path", [k[0] for k in schema.KEYS if RANGE.search(k[3])
                                  and "<" not in k[0]])
def test_documented_ranges_are_the_models(path):
    """Each "outside a-b" on the page: a-1 and b+1 refused naming the key, a and b taken."""
    lo, hi = map(int, RANGE.search(dict((k[0], k[3]) for k in schema.KEYS)[path]).groups())
    base = yaml.safe_load((REPO / "pillar.example").read_text())["kvmcluster"]

    def errors_with(value):
        data = yaml.safe_load(yaml.safe_dump(base))
        node = data
        parts = path.split(":")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        if path == "migration:ports":
            node[parts[-1]] = [value, value]
        _, errs = model.build(data, DEFAULTS)
        # A vm:* default is checked where it applies: each VM's own key.
        key = re.compile(f"kvmcluster:(vm|vms:[^:]+):{parts[-1]}:" if parts[0] == "vm"
                         else f"kvmcluster:{path}:")
        return [str(e) for e in errs if key.search(str(e))]

    for bad in (lo - 1, hi + 1):
        assert errors_with(bad), (path, bad)
    # The upper bound may meet another rule (a bridge's MTU above its port's).
    for good in (lo,) if "above" in dict((k[0], k[3]) for k in schema.KEYS)[path] else (lo, hi):
        assert not errors_with(good), (path, good, errors_with(good))
