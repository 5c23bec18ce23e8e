"""The formula on the 3-node lab, over real salt-ssh, asserting on the nodes' real state.

Order matters: the first tests see fresh nodes.
"""
import json
import re
import subprocess
import time
from pathlib import Path

from lab import net, paths, report, saltcfg
from lab.report import CONFIRMS, summarize
from labtest import BACKENDS, record_timing

NODES = ["kvm01", "kvm02", "kvm03"]


def etc_fingerprint(lab, node):
    return lab.ssh(node, "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum "
                         "| sha256sum; virsh -c qemu:///system pool-list --all 2>&1 || true")


def changes_of(result):
    """{state id: sorted change keys} of one node's state.apply result."""
    return {k.split("_|-")[1]: sorted(v["changes"]) for k, v in result.items()
            if isinstance(v, dict) and v.get("changes")}


def test_lab_is_a_rack(lab):
    for n in NODES:
        out = lab.ssh(n, "systemctl is-system-running; findmnt -n -o TARGET /data01; hostname")
        assert out.split() == ["running", "/data01", n]


def test_info_reports_each_nodes_own_view(lab):
    results, proc = lab.apply("kvmcluster.info")
    assert proc.returncode == 0, proc.stdout[-2000:]
    for n in NODES:
        key = next(k for k in results[n] if k.endswith("_|-reported"))
        facts = json.loads(results[n][key]["comment"])
        assert facts["id"] == n and facts["os_family"] == "Debian" and facts["systemd"] is True
        assert facts["kvm_device"]["exists"] is True
        assert facts["model"]["address"] == lab.ip[n] + "/24"
        assert facts["model"]["bridge"]["name"] == "br0"


def test_bad_pillar_touches_no_node(lab):
    before = {n: etc_fingerprint(lab, n) for n in NODES}
    bad = json.loads(json.dumps(lab.pillar))
    bad["kvmcluster"]["nodes"]["kvm03"]["ip"] = "172.30.10.42/24"  # kvm02's address
    bad["kvmcluster"]["bond"] = {"mode": "802.3ab"}
    lab.set_pillar(bad)
    try:
        validated = lab.validate()
        results, proc = lab.apply()
    finally:
        lab.reset_pillar()
    # The management node's own check lists every error and exits non-zero.
    assert validated.returncode == 1
    assert "[kvm03] kvmcluster:nodes:kvm03:ip: 172.30.10.42 is also the address of node " \
           "kvm02" in validated.stdout
    assert "[cluster] kvmcluster:bond:mode: '802.3ab' is not a bonding mode" in validated.stdout
    assert proc.returncode != 0
    comments = {}
    for n in NODES:
        s = summarize(results[n])
        assert s["changed"] == 0
        comments[n] = results[n][next(k for k in results[n] if "model-validated" in k)][
            "comment"]
    # Each error is printed once in the run's output: the first node lists them all, the
    # others their own and a count of the rest.
    ip_error = "[kvm03] kvmcluster:nodes:kvm03:ip: 172.30.10.42 is also the address of node kvm02"
    bond_error = "[cluster] kvmcluster:bond:mode: '802.3ab' is not a bonding mode"
    assert ip_error in comments["kvm01"] and bond_error in comments["kvm01"], comments["kvm01"]
    assert ip_error in comments["kvm03"] and bond_error not in comments["kvm03"]
    assert bond_error not in comments["kvm02"] and "listed once, by kvm01" in comments["kvm02"]
    assert proc.stdout.count(bond_error) == 1, proc.stdout[-3000:]
    for n in NODES:
        # Requisites, not failhard: every other state of the formula is held back by the
        # failed model and changes nothing.
        others = {k.split("_|-")[1]: v for k, v in results[n].items()
                  if "model-validated" not in k}
        assert len(others) >= 18
        for sid, r in others.items():
            assert r["result"] is False and r["changes"] == {}, (sid, r)
            assert r["comment"].startswith("One or more requisite failed"), (sid, r["comment"])
    after = {n: etc_fingerprint(lab, n) for n in NODES}
    assert after == before


def test_pillar_that_did_not_render_is_reported_first_and_touches_no_node(lab):
    """A YAML error in the pillar file: the management node's check says so first (not
    "no subnets"), salt-ssh's apply stops on every node before any state, /etc unchanged."""
    before = {n: etc_fingerprint(lab, n) for n in NODES}
    text = (saltcfg.PILLAR_DIR / "kvmcluster.sls").read_text()
    broken = text.replace("  subnets:\n", "  subnets: [\n", 1)
    assert broken != text
    (saltcfg.PILLAR_DIR / "kvmcluster.sls").write_text(broken)
    try:
        validated = lab.validate()
        proc = saltcfg.salt_ssh("*", "state.apply", "kvmcluster", "--out=json", "--static",
                                timeout=900)
    finally:
        lab.reset_pillar()
    assert validated.returncode == 1
    first = next(ln for ln in validated.stdout.splitlines() if "[cluster]" in ln)
    assert "pillar: did not render, fix it first" in first, validated.stdout[-1500:]
    assert "subnets" not in validated.stdout.split("did not render")[0]
    assert proc.returncode != 0
    got = json.loads(proc.stdout[proc.stdout.find("{"):])
    for n in NODES:
        assert "Pillar failed to render" in json.dumps(got[n]), (n, str(got[n])[:500])
    assert {n: etc_fingerprint(lab, n) for n in NODES} == before


def test_test_mode_predicts_the_real_run_then_zero_changes(lab):
    predicted, proc = lab.apply("kvmcluster", "test=True")
    assert proc.returncode == 0, proc.stdout[-3000:]
    t0 = time.monotonic()
    applied, proc = lab.apply()
    record_timing("salt-ssh state.apply, first run, 3 container nodes", time.monotonic() - t0)
    assert proc.returncode == 0, proc.stdout[-3000:]
    t0 = time.monotonic()
    again, proc = lab.apply()
    record_timing("salt-ssh state.apply, second run, 3 container nodes", time.monotonic() - t0)
    assert proc.returncode == 0
    for n in NODES:
        assert summarize(applied[n])["failed"] == 0, summarize(applied[n])
        # The FULL changes of every state ID: test=True on fresh nodes said exactly what the
        # real run did (packages, files, units, pools, the bridge, the libvirt network).
        assert set(predicted[n]) == set(applied[n])
        for key, real in applied[n].items():
            pred = predicted[n][key]
            assert pred["changes"] == real["changes"], (n, key, pred["changes"], real["changes"])
            assert pred["result"] is (None if real["changes"] else True), (n, key, pred)
        assert len(changes_of(applied[n])) >= 8, changes_of(applied[n])
        assert summarize(again[n])["changed"] == 0, summarize(again[n])["changed_ids"]
    # The bridge takeover, over the very salt-ssh session it moves: test=True said exactly
    # which files change and what moves; the real run did that, then was confirmed.
    sid = "kvmcluster-network-bridge-managed"
    shown = []
    for n, backend in zip(NODES, BACKENDS):
        pred = next(v for k, v in predicted[n].items() if sid in k)
        real = next(v for k, v in applied[n].items() if sid in k)
        shown.append(f"== {n} test=True\n{pred['comment']}\n"
                     + json.dumps(pred["changes"], indent=1, sort_keys=True))
        assert pred["result"] is None and real["result"] is True, (pred, real)
        assert pred["changes"]["backend"] == real["changes"]["backend"] == backend
        for key in ("files", "risk", "runtime"):
            assert pred["changes"][key] == real["changes"][key], (n, key)
        assert pred["changes"]["risk"] == "disruptive"
        assert pred["changes"]["runtime"]["addresses"] == [
            {"address": f"{lab.ip[n]}/24", "from": "eth0", "to": "br0"},
            {"address": f"{net.ip6_of(lab.ip[n])}/64", "from": "eth0", "to": "br0"}]
        assert pred["changes"]["runtime"]["routes"] == [
            "10.99.0.0/24 via 172.30.10.1: eth0 -> br0",
            "fd00:99::/64 via fd00:30:10::1: eth0 -> br0"]
        assert pred["changes"]["runtime"]["management_session"]["touched"] is True
        took = float(re.search(r"br0 took over in ([\d.]+)s", real["comment"]).group(1))
        record_timing(f"takeover of eth0 by br0 on {n} ({backend}), transaction until the "
                      "local check passed", took)
        # One command: the node proved the path to the management node and confirmed itself.
        assert real["changes"]["runtime"]["confirmation"]["by"] == "node", real["changes"]
        assert "confirmed by the node itself" in real["comment"], real["comment"]
    assert not CONFIRMS  # no second command was run
    with open("/tmp/kvmcluster-lab-network-test-mode.txt", "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(shown) + "\n")


POOL_PY = r"""
import json, libvirt, xml.etree.ElementTree as ET
c = libvirt.open("qemu:///system")
p = c.storagePoolLookupByName("default")
x = ET.fromstring(p.XMLDesc(0))
print(json.dumps({"active": p.isActive(), "autostart": p.autostart(), "type": x.get("type"),
                  "path": x.findtext("target/path")}))
"""


def test_libvirtd_and_the_primary_pool(lab):
    for n in NODES:
        assert lab.ssh(n, "systemctl is-active libvirtd.service libvirtd.socket "
                          "libvirtd-ro.socket").split() == ["active"] * 3
        assert lab.ssh(n, "systemctl is-enabled libvirtd-tcp.socket libvirtd-tls.socket",
                       check=False).split() == ["disabled", "disabled"]
        assert lab.ssh(n, "stat -c '%G %a' /run/libvirt/libvirt-sock").split() == ["libvirt", "770"]
        pool = json.loads(lab.ssh(n, "python3 -", input=POOL_PY))
        assert pool == {"active": 1, "autostart": 1, "type": "dir", "path": "/data01/primary"}
        assert "kvmadmin" in lab.ssh(n, "getent group libvirt")


def test_hand_changed_pool_is_reported_and_corrected(lab):
    lab.ssh("kvm02", "virsh pool-destroy default && virsh pool-undefine default && "
                     "virsh pool-define-as default dir --target /var/lib/libvirt/images && "
                     "virsh pool-start default && virsh pool-autostart default")
    predicted, _ = lab.apply("kvmcluster", "test=True")
    key = next(k for k in predicted["kvm02"] if "primary-pool-present" in k)
    assert predicted["kvm02"][key]["changes"] == {
        "target": {"old": "/var/lib/libvirt/images", "new": "/data01/primary"}}
    assert "drift from the model in target" in predicted["kvm02"][key]["comment"]
    applied, proc = lab.apply()
    assert proc.returncode == 0
    assert "corrected drift in target" in applied["kvm02"][key]["comment"]
    for n in ("kvm01", "kvm03"):
        assert summarize(applied[n])["changed"] == 0
    pool = json.loads(lab.ssh("kvm02", "python3 -", input=POOL_PY))
    assert pool["path"] == "/data01/primary" and pool["active"] and pool["autostart"]


def test_unmounted_storage_stops_at_preflight(lab):
    # Held aside (not lost) so that the later tests get kvm03's storage back.
    lab.ssh("kvm03", "mkdir -p /run/data01-held && mount --bind /data01 /run/data01-held && "
                     "umount /data01")
    try:
        results, proc = lab.apply()
    finally:
        lab.ssh("kvm03", "mount --bind /run/data01-held /data01 && umount /run/data01-held")
    assert proc.returncode != 0
    pre = results["kvm03"][next(k for k in results["kvm03"] if "preflight-checked" in k)]
    assert pre["result"] is False
    assert "FAIL: primary storage /data01/primary is on the root filesystem" in pre["comment"]
    assert summarize(results["kvm03"])["changed"] == 0
    for n in ("kvm01", "kvm02"):
        assert summarize(results[n])["failed"] == 0


def test_failed_preflight_stops_kvmcluster_not_the_highstate(lab):
    """A top file with kvmcluster and one unrelated state (the lab's labunrelated.sls): a
    node whose preflight fails (a NIC that is not there) runs the unrelated state, and no
    kvmcluster state after its preflight."""
    bad = json.loads(json.dumps(lab.pillar))
    bad["kvmcluster"]["nodes"]["kvm03"]["nic"] = "eth9"
    lab.set_pillar(bad)
    lab.ssh("kvm03", "rm -f /root/unrelated-formula.txt")
    try:
        proc = saltcfg.salt_ssh("kvm03", "state.highstate", "--out=json", "--static",
                                timeout=600)
    finally:
        lab.reset_pillar()
    res = report.parse_json(proc.stdout)["kvm03"]
    by_id = {k.split("_|-")[1]: v for k, v in res.items()}
    assert by_id["lab-unrelated-file-managed"]["result"] is True
    assert lab.ssh("kvm03", "cat /root/unrelated-formula.txt").strip() == \
        "another formula's state ran"
    pre = by_id["kvmcluster-prereqs-preflight-checked"]
    assert pre["result"] is False
    assert "kvmcluster:nodes:kvm03:nic: eth9 not found on this node" in pre["comment"]
    held = {sid: r for sid, r in by_id.items() if sid.startswith("kvmcluster-")
            and sid not in ("kvmcluster-model-validated", "kvmcluster-prereqs-preflight-checked")}
    assert len(held) >= 18
    for sid, r in held.items():
        assert r["result"] is False and r["changes"] == {}, (sid, r)
        assert r["comment"].startswith("One or more requisite failed"), (sid, r["comment"])


def test_make_lab_ssh_runs_every_command_on_the_node(lab):
    # A path that exists on the host and on the node alike: only where it appears says
    # which shell ran the second command.
    marker = Path("/tmp/kvmcluster-make-lab-marker")
    marker.unlink(missing_ok=True)
    lab.ssh("kvm01", f"rm -f {marker}")
    res = subprocess.run(["make", "-s", "lab", f"ARGS=ssh kvm01 -- hostname; touch {marker}; "
                          f"test -e {marker} && echo made-on-node"],
                         cwd=str(paths.REPO_ROOT), capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["kvm01", "made-on-node"], res.stdout
    assert not marker.exists()  # the host's shell never saw the second command
    lab.ssh("kvm01", f"rm -f {marker}")
