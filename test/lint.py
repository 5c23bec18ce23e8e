"""make lint: every linter of the project, with its findings counted. Exit 1 on any."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def linters():
    sls = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kvmcluster").rglob("*")
                 if p.suffix in (".sls", ".jinja"))
    rst = ["README.rst", "CHANGELOG.rst", *sorted(str(p.relative_to(ROOT))
                                                 for p in (ROOT / "docs").glob("*.rst"))]
    return [
        ("ruff", [BIN / "ruff", "check", "--no-cache", "--output-format", "concise", "."]),
        ("yamllint", [BIN / "yamllint", "-s", "-f", "parsable", "."]),
        ("salt-lint", [BIN / "salt-lint", "-c", ".salt-lint", *sls]),
        ("rstcheck", [BIN / "rstcheck", "--report-level", "warning", *rst]),
    ]


def run():
    """[(linter, exit code, findings, output)]"""
    out = []
    for name, argv in linters():
        res = subprocess.run([str(a) for a in argv], cwd=ROOT, capture_output=True, text=True,
                             check=False)
        text = (res.stdout + res.stderr).strip()
        if name == "ruff":
            findings = sum(1 for ln in text.splitlines() if ln.startswith(("./", "_", "test",
                                                                          "docs", "kvm")))
        elif name == "yamllint":
            findings = sum(1 for ln in text.splitlines() if ": [" in ln)
        elif name == "salt-lint":
            findings = sum(1 for ln in text.splitlines() if re.match(r"^\[\d+\] ", ln))
        else:
            findings = 0 if res.returncode == 0 else max(1, text.count("(ERROR/") +
                                                         text.count("(WARNING/"))
        if res.returncode and not findings:
            findings = 1
        out.append((name, res.returncode, findings, text))
    return out


def main():
    results = run()
    for name, rc, findings, text in results:
        print(f"{name:10} {findings} finding(s)")
        if rc:
            print("\n".join("    " + ln for ln in text.splitlines()))
    return 1 if any(rc for _, rc, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
