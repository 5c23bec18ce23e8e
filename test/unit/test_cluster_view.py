"""The cluster view's findings and table (``_utils/kvmcluster_cluster.py``) from node reports
shaped as ``kvmcluster_report.node`` returns them: a converged cluster has no errors, and
each way a cluster breaks is named with its node."""
import copy
import os

from kvmtestlib import load_module

cl = load_module("_utils", "kvmcluster_cluster")
GIB = 1 << 30
WINDOW = (1000.0, 1003.0)


def report(node, ip, vms_running=(), mtu=1500, features=("sse2", "avx"), qemu="7.2.22"):
    return {
        "node": node, "os": "Debian 12", "time": 1001.0, "ntp_synchronized": True,
        "model": {"ip": f"{ip}/24", "hypervisor": True, "bridge": "br0", "mtu": 1500,
                  "port": "eth0", "port_kind": "nic", "slaves": [],
                  "primary_path": "/data01/primary",
                  "secondary": {"enabled": True, "type": "external",
                                "mountpoint": "/mnt/secondary"},
                  "vms": {"vm1": "kvm01", "vm2": "kvm02"},
                  "vm_states": {"vm1": "running", "vm2": "running"}},
        "bridge": {"name": "br0", "exists": True, "operstate": "up", "mtu": mtu,
                   "addresses": [f"{ip}/24"],
                   "ports": [{"name": "eth0", "kind": "nic", "mtu": mtu, "operstate": "up"}]},
        "libvirtd": "active",
        "libvirt": {"libvirt_version": "9.0.0", "qemu_version": qemu,
                    "pools": {"primary": {"name": "default", "path_expected": "/data01/primary",
                                          "defined": True, "active": True,
                                          "path": "/data01/primary", "available": 100 * GIB},
                              "secondary": {"name": "secondary",
                                            "path_expected": "/mnt/secondary",
                                            "defined": True, "active": True,
                                            "path": "/mnt/secondary", "available": 50 * GIB}},
                    "cpu": {"arch": "x86_64", "vendor": "Intel", "model": "Broadwell",
                            "features": list(features)},
                    "vms": {"running": list(vms_running), "stopped": []},
                    "memory_mb": 16000, "cpus": 4},
        "share": {"mountpoint": "/mnt/secondary", "mounted": True,
                  "fstype": "fuse.glusterfs", "writable": True, "qemu_user": "libvirt-qemu"},
        "network_pending": None,
    }


def converged():
    return {"kvm01": report("kvm01", "172.30.10.41", ["vm1"]),
            "kvm02": report("kvm02", "172.30.10.42", ["vm2"])}


def whats(found, level=None):
    return [(f["node"], f["what"]) for f in found if level in (None, f["level"])]


def test_a_converged_cluster_has_no_findings_and_a_row_per_node():
    reps = converged()
    assert cl.findings(reps, WINDOW) == []
    text = cl.table(reps, [], WINDOW)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["NODE", "BRIDGE"]
    assert lines[1].startswith("kvm01 ") and "br0 172.30.10.41/24" in lines[1]
    assert "fuse.glusterfs rw" in lines[1] and "1/1" in lines[1]
    assert lines[-1] == "no findings: the nodes agree"


def test_mtu_share_and_unreachable_are_errors_naming_the_node():
    reps = converged()
    reps["kvm01"]["bridge"]["mtu"] = 1400
    reps["kvm02"]["share"].update(mounted=False, writable=False)
    reps["kvm03"] = {"node": "kvm03", "unreachable": "ssh: connect timed out"}
    errors = whats(cl.findings(reps, WINDOW), "error")
    assert ("kvm01", "bridge br0 MTU 1400, the model says 1500") in errors
    assert ("kvm02", "shared storage /mnt/secondary is not mounted") in errors
    assert ("kvm03", "unreachable: ssh: connect timed out") in errors
    assert (None, "bridge MTU differs between nodes (1400: kvm01; 1500: kvm02)") in errors
    row = cl.row("kvm03", reps["kvm03"])
    assert row[:2] == ["kvm03", "UNREACHABLE"] and len(row) == len(cl.COLUMNS)


def test_a_read_only_share_and_a_pool_elsewhere_are_errors():
    reps = converged()
    reps["kvm02"]["share"].update(writable=False, error="Read-only file system")
    reps["kvm01"]["libvirt"]["pools"]["primary"]["path"] = "/var/lib/libvirt/images"
    errors = whats(cl.findings(reps, WINDOW), "error")
    assert ("kvm02", "shared storage /mnt/secondary is not writable as libvirt-qemu: "
                     "Read-only file system") in errors
    assert ("kvm01", "primary pool default at /var/lib/libvirt/images, the model says "
                     "/data01/primary") in errors
    assert any(n is None and w.startswith("primary pool path differs") for n, w in errors)


def test_a_vm_on_two_nodes_is_an_error_on_the_wrong_node_a_warning():
    reps = converged()
    reps["kvm02"]["libvirt"]["vms"]["running"] = ["vm1", "vm2"]
    found = cl.findings(reps, WINDOW)
    assert (None, "VM vm1 runs on 2 nodes: kvm01, kvm02") in whats(found, "error")
    reps = converged()
    reps["kvm01"]["libvirt"]["vms"]["running"] = []
    reps["kvm02"]["libvirt"]["vms"]["running"] = ["vm1", "vm2"]
    warn = whats(cl.findings(reps, WINDOW), "warning")
    assert ("kvm02", "VM vm1 runs on kvm02, the model places it on kvm01: salt-run "
                     "kvmcluster.migrate vm=vm1 target=kvm01") in warn
    assert not whats(cl.findings(reps, WINDOW), "error")


def test_cpu_features_and_versions_that_stop_a_migration_one_way():
    reps = converged()
    reps["kvm01"] = report("kvm01", "172.30.10.41", ["vm1"], features=("sse2", "avx", "avx2"),
                           qemu="8.2.0")
    assert cl.cpu_compatibility(reps) == {("kvm01", "kvm02"): ["avx2"], ("kvm02", "kvm01"): []}
    found = cl.findings(reps, WINDOW)
    assert (None, "CPU: guests of kvm01 (host-model) cannot move to kvm02, which lacks avx2") \
        in whats(found, "warning")
    # A major QEMU version apart is an error, not a warning.
    assert any(n is None and w.startswith("QEMU versions differ (kvm01 8.2.0, kvm02 7.2.22)")
               for n, w in whats(found, "error"))


def test_clock_offset_is_measured_against_the_window():
    rep = report("kvm01", "172.30.10.41")
    assert cl.clock_offset(rep, WINDOW) == 0.0
    rep["time"] = 1010.0
    assert cl.clock_offset(rep, WINDOW) == 7.0
    rep["time"] = 990.0
    assert cl.clock_offset(rep, WINDOW) == -10.0
    reps = converged()
    reps["kvm02"]["time"] = 1010.0
    reps["kvm02"]["ntp_synchronized"] = False
    warn = whats(cl.findings(reps, WINDOW), "warning")
    assert ("kvm02", "clock off by at least +7.0 s from the management node's") in warn
    assert ("kvm02", "clock not synchronized (NTP)") in warn


def test_bond_slaves_without_link_or_lacp_are_warnings():
    reps = converged()
    reps["kvm01"]["bridge"]["ports"] = [{
        "name": "bond0", "kind": "bond", "mode": "802.3ad", "mtu": 1500,
        "slaves": [{"name": "eth0", "carrier": True, "lacp_in_aggregator": True},
                   {"name": "eth1", "carrier": False, "lacp_in_aggregator": False},
                   {"name": "eth2", "carrier": True, "lacp_in_aggregator": False}]}]
    warn = whats(cl.findings(reps, WINDOW), "warning")
    assert ("kvm01", "bond0 slave eth1: no link") in warn
    assert any(n == "kvm01" and w.startswith("bond0 slave eth2: not in the LACP aggregator")
               for n, w in warn)
    assert "bond0[802.3ad:eth0,eth1(down)(no-lacp),eth2(no-lacp)]" in cl.row("kvm01",
                                                                            reps["kvm01"])


def _with_cert(rep, after="1970-01-02T00:00:00Z", ca="aa" * 32, **over):
    rep["model"]["migration_tls"] = {"plaintext": False, "renew_hours": 10}
    rep["migration_cert"] = dict({"subject": rep["node"], "not_after": after,
                                  "ca_fingerprint": ca, "signed_by_ca": True,
                                  "key_matches": True, "client_cert_same": True}, **over)
    return rep


def test_migration_certificates_expiry_shown_and_faults_found():
    # time 1001 s after the epoch: 1970-01-02 is ~23 h ahead, 1970-01-01T05:00 ~4 h.
    reps = converged()
    reps["kvm01"] = _with_cert(reps["kvm01"])
    assert cl.findings(reps, WINDOW) == []  # kvm02 has none yet: a migration issues it
    wide = cl.table(reps, [], WINDOW, wide=True).splitlines()
    assert wide[0].endswith("MIGRATION CERT")
    assert wide[1].endswith("1970-01-02 00:00") and wide[2].endswith("none yet")
    reps["kvm02"] = _with_cert(reps["kvm02"], after="1970-01-01T05:00:00Z")
    assert whats(cl.findings(reps, WINDOW)) == [
        ("kvm02", "migration certificate expires 1970-01-01T05:00:00Z: run salt-run "
                  "kvmcluster.certificates (a migration renews it too)")]
    reps["kvm02"] = _with_cert(reps["kvm02"], ca="bb" * 32, key_matches=False)
    found = cl.findings(reps, WINDOW)
    assert ("kvm02", "migration certificate not for the node's key: run salt-run "
                     "kvmcluster.certificates") in whats(found, "error")
    assert (None, f"migration certificates from different CAs: {'aa' * 8}: kvm01; "
                  f"{'bb' * 8}: kvm02") in whats(found, "error")
    reps["kvm02"]["model"]["migration_tls"]["plaintext"] = True
    assert not any(f["node"] == "kvm02" for f in cl.findings(reps, WINDOW))


def test_reports_of_any_shape_never_raise():
    reps = converged()
    odd = copy.deepcopy(reps)
    odd["kvm01"]["bridge"] = {"error": "boom"}
    odd["kvm02"]["libvirt"] = {"error": "cannot connect"}
    odd["kvm03"] = {"node": "kvm03", "model_error": "kvmcluster pillar is invalid"}
    found = cl.findings(odd, None)
    assert ("kvm01", "bridge br0: boom") in whats(found, "error")
    assert ("kvm02", "libvirt: cannot connect") in whats(found, "error")
    assert ("kvm03", "pillar model invalid: kvmcluster pillar is invalid") in whats(found)
    assert cl.table(odd, found).count("\n") >= 4


# ---- the node's report never raises --------------------------------------------------

rep_mod = load_module("_modules", "kvmcluster_report")


def test_a_node_with_an_invalid_model_reports_it_instead_of_raising():
    def bad(*_a, **_k):
        raise RuntimeError("kvmcluster pillar is invalid (1 error)")
    rep_mod.__grains__ = {"id": "kvm01", "os": "Debian", "osrelease": "12"}
    rep_mod.__salt__ = {"kvmcluster_model.load": bad}
    out = rep_mod.node(parameters="{}", cluster="{}")
    assert out["node"] == "kvm01" and out["model_error"].startswith("kvmcluster pillar")
    assert isinstance(out["time"], float)


def test_a_share_that_is_not_mounted_is_said_so(tmp_path):
    out = rep_mod.share(str(tmp_path), node="kvm01")
    assert out["mounted"] is False and out["writable"] is False
    assert out["mountpoint"] == str(tmp_path)


def test_a_missing_bridge_is_said_so():
    assert rep_mod.bridge("kvmnosuchbr0") == {"name": "kvmnosuchbr0", "exists": False}


def test_the_share_probe_never_follows_a_planted_link(tmp_path):
    """Whoever writes to the share may plant links at names root would use: the probe's
    name is random, made with O_EXCL|O_NOFOLLOW and given away through its descriptor, so
    a planted link's target keeps its owner and content."""
    import pwd
    import shutil

    if shutil.which("runuser") is None:
        import pytest
        pytest.skip("runuser is not on this machine")
    share = tmp_path / "share"
    share.mkdir()
    share.chmod(0o777)
    victim = tmp_path / "shadow"
    victim.write_text("root:$6$secret:19000::::::\n")
    victim.chmod(0o640)
    os.chown(victim, 12345, 12345)  # a chown through the link would show
    for name in (".kvmcluster-probe-kvm01", ".kvmcluster-probe-kvm02", ".kvmcluster-probe"):
        (share / name).symlink_to(victim)
    # The account this test can run as below its temporary root (whose parents are 0700).
    me = pwd.getpwuid(os.getuid())
    writable, error = rep_mod._probe(str(share), me)
    assert (writable, error) == (True, None)
    st = victim.stat()
    assert st.st_uid == 12345 and oct(st.st_mode & 0o777) == "0o640"
    assert victim.read_text() == "root:$6$secret:19000::::::\n"
    assert sorted(p.name for p in share.iterdir()) == [
        ".kvmcluster-probe", ".kvmcluster-probe-kvm01", ".kvmcluster-probe-kvm02"]


def _bonded(reps):
    for rep in reps.values():
        rep["bridge"]["ports"] = [{
            "name": "bond0", "kind": "bond", "mode": "802.3ad", "mtu": 9000,
            "slaves": [{"name": "enp129s0f0np0", "carrier": True, "lacp_in_aggregator": True},
                       {"name": "enp129s0f1np1", "carrier": True,
                        "lacp_in_aggregator": True}]}]
        rep["libvirt"]["cpu"]["model"] = "Icelake-Server-noTSX"
    return reps


def test_the_default_table_fits_120_columns_and_all_columns_come_on_request():
    reps = _bonded(converged())
    reps["kvm01"]["share"]["fstype"] = "nfs4"
    narrow = cl.table(reps, [], WINDOW)
    wide = cl.table(reps, [], WINDOW, wide=True)
    print(f"table widths: {max(map(len, narrow.splitlines()))} default, "
          f"{max(map(len, wide.splitlines()))} all")
    assert max(len(ln) for ln in narrow.splitlines()) <= 120, narrow
    assert narrow.splitlines()[0].split() == ["NODE", "BRIDGE", "ADDRESS", "PORT", "MTU",
                                              "LIBVIRTD", "PRIMARY", "SECONDARY", "SHARE",
                                              "VMS", "RUN/ALL", "NET", "TXN"]
    assert "bond0 2/2" in narrow and "100G free" in narrow and "/data01/primary" not in narrow
    assert max(len(ln) for ln in wide.splitlines()) > 120
    for word in ("CPU", "LIBVIRT/QEMU", "CLOCK", "Icelake-Server-noTSX",
                 "bond0[802.3ad:enp129s0f0np0,enp129s0f1np1]", "/data01/primary 100G free"):
        assert word in wide, word
    # A slave without link counts against the bond in the narrow table, too.
    reps["kvm02"]["bridge"]["ports"][0]["slaves"][1]["carrier"] = False
    assert "bond0 1/2" in cl.table(reps, [], WINDOW)
