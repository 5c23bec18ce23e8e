"""A storage network apart from the guests' (networks:storage, nodes:<id>:storage_ip): the
model, the export's clients, the firewall, the mounts and the pool all use the nodes'
storage addresses, and validation keeps guests out of it. Starts from pillar.example as it
is (it has a storage network)."""
import copy

import pytest

from kvmtestlib import DELETE, EXAMPLE_PILLAR, edit_pillar, formula_values, load_module, \
    utils_dunder

model = load_module("_modules", "kvmcluster_model")
firewall = load_module("_modules", "kvmcluster_firewall")
DEFAULTS = formula_values()["cluster"]
BASE = EXAMPLE_PILLAR["kvmcluster"]
STORAGE = {"kvm01": "172.30.30.41", "kvm02": "172.30.30.42", "kvm03": "172.30.30.43"}


def build(changes=None, base=BASE):
    built, errors = model.build(edit_pillar(base, changes or {}), DEFAULTS,
                                self_id="kvm02", self_os_family="Debian")
    return built, [str(e) for e in errors]


def test_the_share_goes_over_the_storage_network():
    built, errors = build()
    assert errors == []
    sec = built["storage"]["secondary"]
    assert built["networks"]["storage"] == "172.30.30.0/24"
    assert sec["address"] == STORAGE["kvm01"]      # the server's storage address
    assert sec["clients"] == sorted(STORAGE.values())
    assert {n: v["storage_ip"] for n, v in built["nodes"].items() if v["storage_ip"]} == STORAGE
    # The server lets the clients in by their storage addresses only.
    rules = firewall.wanted(model.node_view(built, "kvm01"))
    nfs = [r for r in rules if 'service name="nfs"' in r]
    assert nfs == [f'rule family="ipv4" source address="{a}" service name="nfs" accept'
                   for a in sorted(STORAGE.values())]
    assert not any("172.30.10." in r for r in rules if "nfs" in r or "mountd" in r)


def test_without_a_storage_network_the_node_addresses_carry_the_share():
    built, errors = build({"networks:storage": None, **{f"nodes:{n}:storage_ip": DELETE
                                                         for n in STORAGE}})
    assert errors == []
    sec = built["storage"]["secondary"]
    assert sec["address"] == "172.30.10.41"
    assert sec["clients"] == ["172.30.10.41", "172.30.10.42", "172.30.10.43"]


def _nfs_state(view, local=(), test=False, mount=None):
    nfs = load_module("_states", "kvmcluster_nfs")
    calls = []
    nfs.__salt__ = {
        "kvmcluster_model.current": lambda: copy.deepcopy(view),
        "kvmcluster_node.local_address": lambda a: a in local,
        "kvmcluster_node.file_text": lambda p: "",
        "kvmcluster_node.write_file": lambda p, t: calls.append(("write", p, t)),
        "kvmcluster_nfs.mount_of": lambda p: mount,
        "kvmcluster_nfs.wait_and_mount": lambda *a: calls.append(("mount",) + a) or 0,
    }
    nfs.__opts__ = {"test": test}
    nfs.__utils__ = utils_dunder()
    nfs.__context__ = {}
    return nfs, calls


def test_a_client_mounts_the_servers_storage_address(tmp_path):
    built, _ = build()
    view = model.node_view(built, "kvm02")
    fstab = str(tmp_path / "fstab")
    want = "172.30.30.41:/data01/secondary /mnt/secondary nfs " \
           "vers=4.2,hard,timeo=600,retrans=2,_netdev,nosuid,nodev,noexec 0 0"
    nfs, calls = _nfs_state(view, local={"172.30.30.42"}, test=True)
    predicted = nfs.mounted("m", fstab=fstab)
    nfs, calls = _nfs_state(view, local={"172.30.30.42"},
                            mount={"source": "x", "fstype": "nfs4", "options": []})
    # The mount is already there but from elsewhere: refused, never remounted.
    assert nfs.mounted("m", fstab=fstab)["result"] is False
    assert predicted["result"] is None
    assert predicted["changes"] == {
        fstab: {"old": None, "new": want},
        "mounted": {"old": None, "new": "172.30.30.41:/data01/secondary"}}


def test_a_node_without_its_storage_address_neither_mounts_nor_exports(tmp_path):
    built, _ = build()
    for node, state in (("kvm02", "mounted"), ("kvm01", "exported")):
        nfs, calls = _nfs_state(model.node_view(built, node), local=())
        args = {"fstab": str(tmp_path / "fstab")} if state == "mounted" else {
            "exports_file": str(tmp_path / "exports"), "service": "nfs-server.service"}
        ret = getattr(nfs, state)("s", **args)
        assert ret["result"] is False and calls == []
        assert ret["comment"] == (
            f"storage_ip {STORAGE[node]} is on no interface of {node}: configure it on the "
            "storage network's interface (kvmcluster:networks:storage) first")


def test_the_netfs_pool_names_the_servers_storage_address():
    built, _ = build()
    pool = load_module("_states", "kvmcluster_pool")
    pool.__salt__ = {"kvmcluster_model.current": lambda: model.node_view(built, "kvm02")}
    assert pool._desired("secondary")["source"] == {
        "host": "172.30.30.41", "dir": "/data01/secondary", "format": "nfs"}


@pytest.mark.parametrize("changes, expect", [
    ({"networks:storage": "172.30.10.0/25"},
     "[cluster] kvmcluster:networks:storage: 172.30.10.0/25 overlaps the cluster subnet "
     "172.30.10.0/24, where the guests are: the network for the NFS share must be one no "
     "guest can reach"),
    ({"networks:storage": "172.30.30.1/24"},
     "[cluster] kvmcluster:networks:storage: '172.30.30.1/24' is not a network"),
    ({"nodes:kvm03:storage_ip": DELETE},
     "[kvm03] kvmcluster:nodes:kvm03:storage_ip: is required: kvmcluster:networks:storage is "
     "172.30.30.0/24, and kvm03 uses it for the NFS share"),
    ({"nodes:kvm03:storage_ip": "172.30.31.43"},
     "[kvm03] kvmcluster:nodes:kvm03:storage_ip: 172.30.31.43 is not a host address of "
     "kvmcluster:networks:storage (172.30.30.0/24)"),
    ({"nodes:kvm03:storage_ip": "172.30.30.255"},
     "[kvm03] kvmcluster:nodes:kvm03:storage_ip: 172.30.30.255 is not a host address"),
    ({"nodes:kvm03:storage_ip": "172.30.30.42"},
     "[kvm03] kvmcluster:nodes:kvm03:storage_ip: 172.30.30.42 is also kvm02's"),
    ({"nodes:kvm03:storage_ip": "not-an-address"},
     "[kvm03] kvmcluster:nodes:kvm03:storage_ip:"),
    # One network for both: a node may use one address for both, never another node's.
    ({"networks:storage": "172.30.20.0/24", "nodes:kvm01:storage_ip": "172.30.20.41",
      "nodes:kvm02:storage_ip": "172.30.20.42", "nodes:kvm03:storage_ip": "172.30.20.41"},
     "[kvm03] kvmcluster:nodes:kvm03:storage_ip: 172.30.20.41 is also kvm01's"),
    ({"networks:storage": "172.30.20.0/24", "nodes:kvm01:storage_ip": "172.30.20.41",
      "nodes:kvm02:storage_ip": "172.30.20.43", "nodes:kvm03:storage_ip": "172.30.20.99"},
     "[kvm02] kvmcluster:nodes:kvm02:storage_ip: 172.30.20.43 is kvm03's address on another "
     "network"),
    ({"nodes:mgmt01:storage_ip": "172.30.30.12"},
     "[mgmt01] kvmcluster:nodes:mgmt01:storage_ip: 172.30.30.12 is given, but mgmt01 does not "
     "use kvmcluster:networks:storage (the NFS share)"),
    ({"storage:secondary:clients": ["172.30.10.42"]},
     "[cluster] kvmcluster:storage:secondary:clients:0: 172.30.10.42/32 is not inside "
     "kvmcluster:networks:storage (172.30.30.0/24)"),
    ({"storage:secondary:clients": ["0.0.0.0/0"]},
     "[cluster] kvmcluster:storage:secondary:clients:0: 0.0.0.0/0 is not inside "
     "kvmcluster:networks:storage"),
])
def test_a_storage_network_that_guests_could_reach_or_a_wrong_address_is_refused(changes,
                                                                                   expect):
    built, errors = build(changes)
    assert built is None
    assert any(e.startswith(expect) for e in errors), errors


def test_a_storage_network_without_the_formulas_share_is_one_error():
    built, errors = build({"storage:secondary:type": "external",
                           "storage:secondary:server": None,
                           "nodes:kvm01:roles": DELETE})
    assert built is None
    assert errors == ["[cluster] kvmcluster:networks:storage: is set, but the formula serves "
                      "no NFS share (storage:secondary:enabled true with type nfs): a site's "
                      "own share is mounted over the network the site chose"]


def test_a_storage_address_without_the_network_is_refused():
    built, errors = build({"networks:storage": None})
    assert built is None
    assert "[kvm02] kvmcluster:nodes:kvm02:storage_ip: 172.30.30.42 is given but " \
           "kvmcluster:networks:storage is not set" in errors


def test_clients_inside_the_storage_network_are_kept():
    built, errors = build({"storage:secondary:clients": ["172.30.30.40/29"]})
    assert errors == []
    assert built["storage"]["secondary"]["clients"] == ["172.30.30.40/29"]


def test_a_hostile_server_or_address_is_reported_once_never_raised():
    built, errors = build({"storage:secondary:server": ["kvm01"], "nodes:kvm01:roles": DELETE})
    assert built is None and not any(model.INTERNAL in e for e in errors), errors
    assert any(e.startswith("[cluster] kvmcluster:storage:secondary:server: ['kvm01'] is not "
                            "a node") for e in errors), errors
    built, errors = build({"nodes:kvm02:storage_ip": ["a"]})
    assert [e for e in errors if "storage_ip" in e] == [
        "[kvm02] kvmcluster:nodes:kvm02:storage_ip: ['a'] is not an IP address"]
