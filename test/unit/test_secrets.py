"""Secrets stay on the management node: the runner sends a node its model with every secret
withheld, the node's model still validates and still knows a key pair is set up, and no
message of the validator ever quotes a secret."""
import copy
import json
import re

from kvmtestlib import SEED_PILLAR, fake_pubkey, formula_values, load_module

model = load_module("_modules", "kvmcluster_model")
safe = load_module("_utils", "kvmcluster_safe")
runner = load_module("_runners", "kvmcluster")
DEFAULTS = formula_values()["cluster"]
# A key-shaped secret whose body is easy to find in any text.
BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQ"
PRIV = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{BODY}\n{BODY[::-1]}\n-----END OPENSSH PRIVATE KEY-----\n"


def _pillar():
    p = copy.deepcopy(SEED_PILLAR["kvmcluster"])
    p["migration"]["ssh"] = {"private_key": PRIV, "public_key": fake_pubkey("mig")}
    for n in ("kvm01", "kvm02", "kvm03"):
        p["nodes"][n]["ssh_host_keys"] = [fake_pubkey(n)]
    return p


def _leaks(text):
    """Any 16 characters of the key's body (a message quoting its first line is a leak)."""
    pieces = [line[i:i + 16] for line in (BODY, BODY[::-1]) for i in range(0, len(line) - 15, 4)]
    return [w for w in pieces if w in text]


def test_the_secret_marks_are_one_list():
    assert model.SECRETS == safe.SECRETS and model.WITHHELD == safe.WITHHELD


def test_the_runner_sends_nodes_no_secret(monkeypatch):
    sent = []
    monkeypatch.setattr(runner, "_ssh_targets", lambda tgt, tgt_type: ["kvm01", "kvm02"],
                        raising=False)
    monkeypatch.setattr(runner, "_node_pillar", lambda node: {"kvmcluster": _pillar()})
    monkeypatch.setattr(runner, "_parameters", lambda: formula_values())
    monkeypatch.setattr(runner, "_call", lambda fun, nodes, tt, ssh, timeout, arg, kwarg: (
        sent.append((fun, nodes, arg, kwarg)) or ({n: {"node": n} for n in nodes}, {})))
    runner.__utils__ = {"kvmcluster_safe.withhold": safe.withhold}
    got, lost = runner._call_model("kvmcluster_report.node", "*", "glob", ssh=True)
    assert sorted(got) == ["kvm01", "kvm02"] and not lost
    text = json.dumps(sent)
    assert sent and _leaks(text) == []
    assert "PRIVATE KEY" not in text
    # What the node builds from it: valid, and migration over SSH still set up.
    cluster = json.loads(sent[0][3]["cluster"])
    built, errors = model.build(cluster, DEFAULTS, self_id="kvm02")
    assert [str(e) for e in errors] == []
    assert built["migration"]["ssh"]["private_key"] == model.WITHHELD
    assert _pillar()["migration"]["ssh"]["private_key"] == PRIV  # the original untouched


def test_the_migration_state_never_writes_a_withheld_key():
    state = load_module("_states", "kvmcluster_migration")
    built, errors = model.build(safe.withhold(_pillar()), DEFAULTS)
    assert not errors
    view = model.node_view(built, "kvm01")
    try:
        state._desired_files(view)
    except Exception as exc:  # noqa: BLE001
        assert "withheld" in str(exc)
    else:
        raise AssertionError("a withheld key was accepted as a key file")


def test_no_message_quotes_a_secret_wherever_it_was_put():
    cases = [("migration", "ssh", PRIV), ("domain", None, PRIV),
             ("account", "name", PRIV), ("nodes", "kvm02", {"ip": PRIV}),
             ("migration", "ssh", {"private_key": PRIV + "x", "public_key": None})]
    for top, sub, value in cases:
        p = _pillar()
        if sub is None:
            p[top] = value
        else:
            p[top] = dict(p.get(top) or {}, **{sub: value})
        built, errors = model.build(p, DEFAULTS)
        assert built is None
        text = "\n".join(str(e) for e in errors)
        assert _leaks(text) == [], (top, sub, text[:300])
        assert re.search(r"kvmcluster:", text)

