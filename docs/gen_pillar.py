"""Writes docs/pillar.rst from _utils/kvmcluster_schema.py and the formula's defaults.

    python docs/gen_pillar.py           # write the page
    python docs/gen_pillar.py --check   # exit 1 when the page is out of date
"""
import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "pillar.rst"


def schema():
    spec = importlib.util.spec_from_file_location(
        "kvmcluster_schema", ROOT / "_utils" / "kvmcluster_schema.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def defaults():
    data = yaml.safe_load((ROOT / "kvmcluster/parameters/defaults.yaml").read_text())
    return data["values"]["cluster"]


def page():
    return schema().render_rst(defaults())


def main(argv):
    text = page()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run `make docs`")
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
