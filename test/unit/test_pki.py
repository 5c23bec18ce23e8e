"""The migration PKI: the CA and certificates (pure), the node's key and files
(kvmcluster_pki, in a temporary root), the runner's issue/renew round over the real node
functions, and the link-safe file helpers they and the share's markers write with."""
import copy
import datetime
import os
import stat

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module, runner_over, utils_dunder

pki = load_module("_utils", "kvmcluster_pki")
files = load_module("_utils", "kvmcluster_files")
node_pki = load_module("_modules", "kvmcluster_pki")
model = load_module("_modules", "kvmcluster_model")
runner = load_module("_runners", "kvmcluster")

PILLAR = copy.deepcopy(SEED_PILLAR["kvmcluster"])
BUILT, ERRORS = model.build(PILLAR, formula_values()["cluster"])
assert not ERRORS, ERRORS
NODES = sorted(n for n, v in BUILT["nodes"].items() if v.get("hypervisor", True))[:2]


@pytest.fixture(scope="module")
def ca():
    return pki.new_ca("test")


def _names(node):
    me = BUILT["nodes"][node]
    # The migration network's address too: QEMU checks the name it connected to.
    return sorted({node, me["hostname"], me["fqdn"]}), [me["ip"].split("/")[0]] + (
        [me["migration_ip"]] if me.get("migration_ip") else [])


# ---- pure ------------------------------------------------------------------------------

def test_a_certificate_carries_the_runners_names_not_the_requests(ca):
    key = pki.new_key()
    cert = pki.issue(*ca, pki.request(key, "kvm01"), "kvm01", ["kvm01", "kvm01.example"],
                     ["172.30.10.11"], 2)
    d = pki.describe(cert, ca[1])
    assert (d["subject"], d["dns"], d["ips"], d["signed_by_ca"]) == (
        "kvm01", ["kvm01", "kvm01.example"], ["172.30.10.11"], True)
    assert pki.same_key(cert, key) and not pki.same_key(cert, pki.new_key())
    assert not pki.signed_by(cert, pki.new_ca("other")[1])
    left = pki.seconds_left(d)
    assert 2 * 3600 - 60 < left <= 2 * 3600


def test_a_request_whose_signature_does_not_hold_is_refused(ca):
    good = pki.request(pki.new_key(), "kvm01")
    # Flip one byte of the signature (the last bytes of the DER before the PEM end).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    import base64

    bad = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
           + b"-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(ValueError, match="signature"):
        pki.issue(*ca, bad, "kvm01", ["kvm01"], ["172.30.10.11"], 2)


@pytest.mark.parametrize("change, why", [
    (None, None),
    ("ca", "not issued by the cluster's CA"),
    ("key", "not for the node's key"),
    ("names", "are not the model's"),
    ("soon", "within renew_hours"),
    ("expired", "expired"),
    ("none", "no certificate yet"),
])
def test_renewal_says_why(ca, change, why):
    key = pki.new_key()
    cert = pki.issue(*ca, pki.request(key, "kvm01"), "kvm01", ["kvm01"], ["10.0.0.1"], 48)
    d = dict(pki.describe(cert, ca[1]), key_matches=True)
    fp, dns, ips, renew = pki.fingerprint(ca[1]), ["kvm01"], ["10.0.0.1"], 24
    now = None
    if change == "ca":
        fp = pki.fingerprint(pki.new_ca("other")[1])
    elif change == "key":
        d["key_matches"] = False
    elif change == "names":
        ips = ["10.0.0.2"]
    elif change == "soon":
        renew = 49
    elif change == "expired":
        now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=49)
    elif change == "none":
        d = None
    got = pki.renewal(d, fp, dns, ips, renew, now)
    assert (got is None) if why is None else (why in got), got


# ---- the link-safe writers ---------------------------------------------------------------

def test_open_dir_refuses_a_link_on_the_way_and_makes_nothing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / ".kvmcluster").symlink_to(victim)
    with pytest.raises(files.Refused, match="is a link"):
        files.open_dir(str(tmp_path / "share"), ".kvmcluster/nodes", make=True)
    assert list(victim.iterdir()) == []
    fd = files.open_dir(str(tmp_path / "share2").replace("share2", "share"), "a/b", make=True)
    os.close(fd)
    assert (tmp_path / "share" / "a" / "b").is_dir()


def test_create_never_writes_through_a_planted_link(tmp_path):
    target = tmp_path / "shadow"
    target.write_text("root:secret\n")
    os.chmod(target, 0o600)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "marker").symlink_to(target)
    fd = files.open_dir(str(tmp_path / "d"))
    try:
        with pytest.raises(FileExistsError):
            files.create(fd, "marker", b"x", 0o644)
        assert files.kind(fd, "marker") == "link"
        with pytest.raises(files.Refused):
            files.read(fd, "marker")
        # replace puts a file of its own where the link was; the target is untouched.
        files.replace(fd, "marker", b"mine\n", 0o640)
        assert files.kind(fd, "marker") == "file" and files.read(fd, "marker") == b"mine\n"
    finally:
        os.close(fd)
    assert target.read_text() == "root:secret\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "marker").st_mode) == 0o640


# ---- the node's side, in a temporary /etc ----------------------------------------------------

@pytest.fixture
def on_node(tmp_path, monkeypatch):
    """kvmcluster_pki of node ``kvm`` with its files under tmp_path (never /etc)."""
    def make(node):
        mod = load_module("_modules", "kvmcluster_pki")
        mod.__utils__ = utils_dunder()
        mod.__grains__ = {"id": node}
        v = copy.deepcopy(model.node_view(BUILT, node))
        mod.__salt__ = {"kvmcluster_model.current": lambda: copy.deepcopy(v)}
        mod._where = lambda: str(tmp_path / node / "etc" / "pki" / "qemu")
        (tmp_path / node / "etc").mkdir(parents=True, exist_ok=True)
        mod._qemu_gid = lambda conf=None: os.getgid()
        return mod

    return make


def test_the_nodes_key_is_made_once_and_stays_on_the_node(on_node, tmp_path, ca):
    node = NODES[0]
    mod = on_node(node)
    first = mod.request()
    d = tmp_path / node / "etc" / "pki" / "qemu"
    keys = [d / n for n in ("server-key.pem", "client-key.pem")]
    assert first["key_made"] and first["certificate"] is None
    assert keys[0].read_bytes() == keys[1].read_bytes()
    assert all(stat.S_IMODE(os.stat(k).st_mode) == 0o640 for k in keys)
    assert "PRIVATE KEY" not in repr(first) and "CERTIFICATE REQUEST" in first["csr"]
    dns, ips = _names(node)
    assert first["model"] == {"dns": dns, "ips": ips, "domain": BUILT["domain"],
                              "hypervisor": True, "plaintext": False, "valid_hours": 8760,
                              "renew_hours": 720}
    again = mod.request()
    assert not again["key_made"] and keys[0].read_bytes() == keys[1].read_bytes()
    # The CSR is for the same key both times.
    cert = pki.issue(*ca, again["csr"].encode(), node, dns, ips, 2)
    assert pki.same_key(cert, keys[0].read_bytes())


def test_install_takes_only_a_certificate_for_this_key_from_that_ca(on_node, tmp_path, ca):
    node = NODES[0]
    mod = on_node(node)
    dns, ips = _names(node)
    req = mod.request()
    other = pki.issue(*ca, pki.request(pki.new_key(), node), node, dns, ips, 2)
    with pytest.raises(node_pki.CommandExecutionError, match="not for"):
        mod.install(other.decode(), ca[1].decode())
    mine = pki.issue(*ca, req["csr"].encode(), node, dns, ips, 2)
    with pytest.raises(node_pki.CommandExecutionError, match="not signed"):
        mod.install(mine.decode(), pki.new_ca("other")[1].decode())
    assert not (tmp_path / node / "etc/pki/qemu/server-cert.pem").exists()
    import base64

    got = mod.install(base64.b64encode(mine).decode(), base64.b64encode(ca[1]).decode())
    assert got["signed_by_ca"] and got["key_matches"] and got["client_cert_same"]
    assert mod.info() == got


def test_a_link_planted_at_the_key_is_refused_and_its_target_untouched(on_node, tmp_path):
    node = NODES[0]
    mod = on_node(node)
    d = tmp_path / node / "etc" / "pki" / "qemu"
    d.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (d / "server-key.pem").symlink_to(victim)
    with pytest.raises(node_pki.CommandExecutionError, match="is a link"):
        mod.request()
    assert victim.read_text() == "keep\n" and not (d / "client-key.pem").exists()


# ---- the runner's round over the real node functions ------------------------------------

@pytest.fixture
def round_trip(on_node, tmp_path, monkeypatch):
    mods = {n: on_node(n) for n in NODES}
    calls = []

    def call_model(fun, tgt, tgt_type, ssh, timeout, arg=(), kwarg=None):
        assert fun == "kvmcluster_pki.request" and tgt_type == "list"
        calls.append(fun)
        return {n: mods[n].request() for n in tgt}, {}

    def call(fun, tgt, tgt_type, ssh, timeout, arg=(), kwarg=None):
        assert fun == "kvmcluster_pki.install"
        # What the node gets is what Salt's own parser makes of the call (a word with '='
        # becomes a keyword argument); public values only, one word each.
        import salt.utils.args

        words = list(arg) + [f"{k}={v}" for k, v in (kwarg or {}).items()]
        assert all(" " not in w and "\n" not in w and "PRIVATE" not in w for w in words)
        args, kwargs = salt.utils.args.parse_input(words, condition=False)
        calls.append(fun)
        return {n: mods[n].install(*args, **kwargs) for n in tgt}, {}

    runner_over(runner, monkeypatch, tmp_path, call, call_model)
    return mods, calls


def test_certificates_are_issued_once_then_kept_then_renewed(round_trip, tmp_path):
    mods, calls = round_trip
    done, missing, plaintext = runner._certificates(NODES, True, 30)
    assert not missing and not plaintext
    assert {n: d["action"] for n, d in done.items()} == {
        n: "issued: no certificate yet" for n in NODES}
    ca_dir = tmp_path / "master" / "kvmcluster-ca"
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca_dir / "ca-key.pem").st_mode) == 0o600
    ca_pem = (ca_dir / "ca-cert.pem").read_bytes()
    for n in NODES:
        assert (tmp_path / n / "etc/pki/qemu/ca-cert.pem").read_bytes() == ca_pem
        assert done[n]["dns"] == _names(n)[0] and done[n]["ips"] == _names(n)[1]
    del calls[:]
    again, missing, _ = runner._certificates(NODES, True, 30)
    assert not missing and {d["action"] for d in again.values()} == {"kept"}
    assert calls == ["kvmcluster_pki.request"]  # nothing installed when all is good
    # Due: fewer hours left than renew_hours now says.
    for n in NODES:
        v = mods[n].__salt__["kvmcluster_model.current"]()
        v["migration"]["certificates"].update(valid_hours=9000, renew_hours=8800)
        mods[n].__salt__["kvmcluster_model.current"] = lambda v=v: copy.deepcopy(v)
    renewed, missing, _ = runner._certificates(NODES, True, 30)
    assert not missing
    for n in NODES:
        assert renewed[n]["action"].startswith("issued: expires "), renewed[n]
        assert renewed[n]["serial"] != again[n]["serial"]
        assert pki.seconds_left(renewed[n]) > 8900 * 3600


def test_a_management_only_node_gets_no_key_and_fails_nothing(on_node, round_trip, tmp_path,
                                                              monkeypatch):
    mods, _ = round_trip
    mgmt = sorted(n for n, v in BUILT["nodes"].items() if not v.get("hypervisor", True))[0]
    mods[mgmt] = on_node(mgmt)
    done, missing, _ = runner._certificates(NODES + [mgmt], True, 30)
    assert not missing, missing
    assert done[mgmt] == {"action": "none: not a hypervisor"}
    assert not (tmp_path / mgmt / "etc" / "pki" / "qemu").exists()


def test_check_only_changes_nothing(round_trip, tmp_path):
    done, missing, _ = runner._certificates(NODES, True, 30, issue=False)
    assert not missing
    assert {d["action"] for d in done.values()} == {"would issue: no certificate yet"}
    assert not (tmp_path / "master" / "kvmcluster-ca").exists()
    assert not any((tmp_path / n / "etc/pki/qemu/server-cert.pem").exists() for n in NODES)


def test_a_ca_directory_open_to_others_is_refused(round_trip, tmp_path):
    ca_dir = tmp_path / "master" / "kvmcluster-ca"
    ca_dir.mkdir(mode=0o755)
    os.chmod(ca_dir, 0o755)
    with pytest.raises(runner.CommandExecutionError, match="0700"):
        runner._certificates(NODES, True, 30)
    assert list(ca_dir.iterdir()) == []


# ---- the share's markers (kvmcluster_nfs.mounted on external storage) --------------------

def _external_state(tmp_path, test=False):
    nfs = load_module("_states", "kvmcluster_nfs")
    pillar = copy.deepcopy(PILLAR)
    pillar["storage"] = {"secondary": {"enabled": True, "type": "external",
                                       "mountpoint": "/mnt/secondary"}}
    for n in pillar["nodes"].values():  # nobody serves an external share
        if isinstance(n.get("roles"), list):
            n["roles"] = [r for r in n["roles"] if r != "nfs_server"]
    built, errors = model.build(pillar, formula_values()["cluster"])
    assert not errors, errors
    v = copy.deepcopy(model.node_view(built, NODES[0]))
    mp = tmp_path / "share"
    mp.mkdir(exist_ok=True)
    v["storage"]["secondary"]["mountpoint"] = str(mp)
    nfs.__salt__ = {"kvmcluster_model.current": lambda: copy.deepcopy(v),
                    "kvmcluster_nfs.mount_of": lambda p: {"source": "gfs:/vol", "fstype":
                                                          "fuse.glusterfs", "options": ["rw"]}}
    nfs.__opts__ = {"test": test}
    nfs.__utils__ = utils_dunder()
    nfs.__context__ = {}
    return nfs.mounted("kvmcluster-nfs-mounted"), mp


def test_the_share_marker_is_made_once_never_through_a_link(tmp_path):
    predicted, mp = _external_state(tmp_path, test=True)
    real, _ = _external_state(tmp_path)
    assert predicted["result"] is None and real["result"] is True, real
    assert predicted["changes"] == real["changes"] == {
        "marker": {"old": None, "new": f"{mp}/.kvmcluster/nodes/{NODES[0]}"}}
    again, _ = _external_state(tmp_path)
    assert (again["result"], again["changes"]) == (True, {})


@pytest.mark.parametrize("where", ["dir", "marker"])
def test_a_link_planted_on_the_share_is_refused_and_its_target_untouched(tmp_path, where):
    victim = tmp_path / "shadow"
    victim.write_text("root:x\n")
    mp = tmp_path / "share"
    mp.mkdir()
    if where == "dir":
        victim_dir = tmp_path / "etc"
        victim_dir.mkdir()
        (mp / ".kvmcluster").symlink_to(victim_dir)
    else:
        (mp / ".kvmcluster" / "nodes").mkdir(parents=True)
        (mp / ".kvmcluster" / "nodes" / NODES[0]).symlink_to(victim)
    for test in (True, False):
        ret, _ = _external_state(tmp_path, test=test)
        assert ret["result"] is False and ret["changes"] == {}, ret
        assert "link" in ret["comment"], ret["comment"]
    assert victim.read_text() == "root:x\n"
    if where == "dir":
        assert list((tmp_path / "etc").iterdir()) == []
