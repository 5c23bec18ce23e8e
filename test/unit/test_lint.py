"""make lint in the fast tier: ruff, yamllint, salt-lint and rstcheck find nothing."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lint  # noqa: E402


def test_every_linter_finds_nothing():
    results = lint.run()
    assert [name for name, *_ in results] == ["ruff", "yamllint", "salt-lint", "rstcheck"]
    report = {name: (rc, findings, text[-2000:]) for name, rc, findings, text in results}
    assert all(rc == 0 and findings == 0 for rc, findings, _ in report.values()), report


def test_a_finding_is_counted(tmp_path, monkeypatch):
    """The counting itself can fail: a file with a finding per linter is reported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("---\na: 1\na: 2\n")
    monkeypatch.setattr(lint, "ROOT", tmp_path)
    monkeypatch.setattr(lint, "linters", lambda: [
        ("yamllint", [lint.BIN / "yamllint", "-s", "-f", "parsable", str(bad)])])
    (name, rc, findings, text), = lint.run()
    assert rc != 0 and findings == 1, text
