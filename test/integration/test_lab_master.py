"""The same formula from a salt-master: highstate on minions installed from wheels, the
cluster pillar from the master with one pillar file per node. Replaces the salt-ssh lab
with a fresh one of three container nodes plus the master."""
import json
import time

import pytest

from lab import control, master, report
from lab.report import summarize
from lab import paths
from labtest import (BACKENDS, Lab, SecretScan, debug_lines, fingerprint, key_needles,
                     record_timing, show)

NODES = ["kvm01", "kvm02", "kvm03"]


@pytest.fixture(scope="module")
def master_lab():
    control.down()  # a lab of its own: minions and a master
    state = control.up(containers=3, with_master=True, backends=BACKENDS)
    yield Lab(state)
    control.down()


def highstate():
    proc = master.salt("*", "state.highstate", "--out=json", "--static", "--timeout=1800")
    results = report.parse_json(proc.stdout)
    pending = [n for n, r in results.items() if report.took_over(r)]
    if pending:
        # The master reaches the minions again over their moved addresses and confirms.
        report.confirm(pending, salt=lambda *a: master.salt(*a, "--timeout=120"))
    return results, proc


def test_keys_were_accepted_by_name(master_lab):  # noqa: ARG001
    listed = master.salt_key("--list=accepted").stdout.split()
    assert set(NODES) <= set(listed)
    conf = (master.MASTER_DIR / "master").read_text()
    assert "auto_accept: false" in conf


def test_highstate_converges_like_salt_ssh(master_lab):
    t0 = time.monotonic()
    first, proc = highstate()
    record_timing("salt state.highstate, first run, 3 container nodes", time.monotonic() - t0)
    assert set(first) == set(NODES), proc.stdout[-2000:]
    for n in NODES:
        assert summarize(first[n])["failed"] == 0, summarize(first[n])["failures"]
        # The minion's own Python could not import the distribution's binding: the formula
        # built libvirt-python into it from the lab's package repository.
        binding = next(v for k, v in first[n].items() if "libvirt-python-present" in k)
        assert binding["changes"]["libvirt-python"] == {"old": None, "new": "9.0.0"}, binding
        assert set(binding["changes"]["packages"]) <= {"gcc", "pkg-config", "libvirt-dev",
                                                       "python3-dev"}
        record_timing(f"libvirt-python built into the minion's own Python on {n}",
                      binding["duration"] / 1000)
        probe = master_lab.ssh(n, f"{master.MINION_VENV}/bin/python -c 'import sys, libvirt; "
                                  "print(libvirt.__file__); print(sys.prefix != "
                                  "sys.base_prefix)'")
        assert probe.split() == [f"{master.MINION_VENV}/lib/python3.11/site-packages/libvirt.py",
                                 "True"], probe
        # The minion proved the path to its master (TCP to the master's port) itself.
        bridge = next(v for k, v in first[n].items() if k.startswith(report.BRIDGE_STATE))
        assert bridge["changes"]["runtime"]["confirmation"]["by"] == "node", bridge
        assert "management peer 172.30.10.11 answers over br0" in bridge["comment"], bridge
    t0 = time.monotonic()
    second, _ = highstate()
    record_timing("salt state.highstate, second run, 3 container nodes", time.monotonic() - t0)
    for n in NODES:
        assert summarize(second[n])["changed"] == 0, summarize(second[n])["changed_ids"]
    by_master = {n: fingerprint(master_lab, n) for n in NODES}
    for n in NODES:
        assert by_master[n]["pools"] == [["default", 1, 1, "/data01/primary"]]
        assert by_master[n]["libvirtd"] == "active" and by_master[n]["socket_mode"] == "0o770"
    # Master and salt-ssh make the same nodes: salt-ssh, with the same pillar, finds
    # nothing to change on what the master converged, and leaves it as it was.
    results, proc = master_lab.apply()
    assert proc.returncode == 0, proc.stdout[-3000:]
    for n in NODES:
        assert summarize(results[n])["changed"] == 0, summarize(results[n])["changed_ids"]
        assert fingerprint(master_lab, n) == by_master[n]


def test_per_node_pillar_changes_only_that_node(master_lab):
    master.set_node_pillar("kvm02", {"kvmcluster": {"sysctl": {"net.core.somaxconn": 2048}}})
    try:
        results, _ = highstate()
        changed = {n: summarize(results[n])["changed_ids"] for n in NODES}
        assert changed == {"kvm01": [], "kvm02": ["kvmcluster-libvirt-sysctl-managed"],
                           "kvm03": []}
        assert master_lab.ssh("kvm02", "sysctl -n net.core.somaxconn").strip() == "2048"
        assert master_lab.ssh("kvm01", "sysctl -n net.core.somaxconn").strip() == "1024"
    finally:
        master.set_node_pillar("kvm02", {})


def test_status_runner_through_the_minions(master_lab):  # noqa: ARG001
    """The cluster view from the master: the runner and its shared code synced from the
    formula's file_roots as an operator does, the report module on the minions."""
    highstate()  # converged, whatever ran before
    for argv in (("salt-run", "saltutil.sync_all"), ("salt", "*", "saltutil.sync_all")):
        proc = (master.salt_run(*argv[1:]) if argv[0] == "salt-run"
                else master.salt(*argv[1:], "--timeout=120"))
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    t0 = time.monotonic()
    table = master.salt_run("kvmcluster.status")
    took = time.monotonic() - t0
    assert table.returncode == 0, table.stdout[-3000:] + table.stderr[-2000:]
    show("salt-run kvmcluster.status (salt-master, 3 minions)", table.stdout.strip())
    record_timing("salt-run kvmcluster.status through the minions, 3 nodes", took)
    data = json.loads(master.salt_run("kvmcluster.status", "--out=json").stdout)
    assert sorted(data["nodes"]) == NODES
    assert not [f for f in data["findings"] if f["level"] == "error"], data["findings"]
    for n in NODES:
        rep = data["nodes"][n]
        assert rep["bridge"]["exists"] and rep["libvirtd"] == "active", rep
        assert rep["libvirt"]["pools"]["primary"]["path"] == "/data01/primary"
        assert table.stdout.count(f"\n{n} ") == 1


def test_the_migration_key_never_leaves_pillar_in_master_mode(master_lab):
    """A highstate and the status runner through the minions, master and minions logging
    at debug: the private key's body is in no process's argv (sampled every 20 ms), not in
    the master's job cache or log, not in a minion's log, not in the runner's output."""
    priv = master_lab.pillar["kvmcluster"]["migration"]["ssh"]["private_key"]
    assert priv and "PRIVATE KEY" in priv
    for argv in (("salt-run", "saltutil.sync_all"), ("salt", "*", "saltutil.sync_all")):
        proc = (master.salt_run(*argv[1:]) if argv[0] == "salt-run"
                else master.salt(*argv[1:], "--timeout=120"))
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    scan = SecretScan(key_needles(priv))
    with scan:
        results, proc = highstate()
        status = master.salt_run("kvmcluster.status")
    for n in NODES:
        assert summarize(results[n])["failed"] == 0, summarize(results[n])["failures"]
    assert status.returncode == 0, status.stdout[-1500:] + status.stderr[-1500:]
    scan.text("highstate", proc.stdout + proc.stderr)
    scan.text("status", status.stdout + status.stderr)
    minion_logs = [paths.HOME / "nodes" / n / "root" / "var" / "log" / "salt" for n in NODES]
    jobs = master.MASTER_DIR / "root" / "cache" / "jobs"
    # Salt puts its log file under root_dir (wherever log_file points).
    master_log = next(master.MASTER_DIR.rglob("master.log"))
    read = scan.files(master_log, jobs, *minion_logs)
    cached = sum(1 for _ in jobs.rglob("*") if _.is_file())
    scan.assert_clean("the migration key's body, looked for during highstate + status "
                      "(salt-master)", read, outputs=2, job_cache_files=cached,
                      master_debug_lines=debug_lines(master_log))


def test_certificates_through_the_minions_keys_stay_where_they_are_made(master_lab):
    """salt-run kvmcluster.certificates through the minions: each hypervisor's certificate
    issued from the CA the master keeps; no private key (the CA's, a node's) in the
    master's job cache, its log or the runner's output."""
    highstate()  # converged (libvirt there), whatever ran before
    for argv in (("salt-run", "saltutil.sync_all"), ("salt", "*", "saltutil.sync_all")):
        proc = (master.salt_run(*argv[1:]) if argv[0] == "salt-run"
                else master.salt(*argv[1:], "--timeout=120"))
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    first = master.salt_run("kvmcluster.certificates", "--out=json")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-1500:]
    # Then again, every certificate renewed, watched: the keys exist now to look for.
    ca_key = next(master.MASTER_DIR.rglob("kvmcluster-ca/ca-key.pem")).read_text()
    node_keys = [(paths.HOME / "nodes" / n / "root" / "etc/pki/qemu/server-key.pem")
                 .read_text() for n in NODES]
    scan = SecretScan([ln for k in [ca_key, *node_keys] for ln in key_needles(k)])
    with scan:
        out = master.salt_run("kvmcluster.certificates", "renew=True", "--out=json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-1500:]
    data = json.loads(out.stdout)
    assert sorted(data["certificates"]) == NODES, data
    for n, c in data["certificates"].items():
        assert c["signed_by_ca"] and c["key_matches"] and n in c["dns"], c
        assert c["action"] == "issued: renewal asked", c
    scan.text("certificates", first.stdout + first.stderr + out.stdout + out.stderr)
    jobs = master.MASTER_DIR / "root" / "cache" / "jobs"
    master_log = next(master.MASTER_DIR.rglob("master.log"))
    read = scan.files(master_log, jobs)
    scan.assert_clean("the CA's and the nodes' private keys, looked for during "
                      "kvmcluster.certificates renew=True (salt-master)", read, outputs=2)
    show("salt-run kvmcluster.certificates (salt-master, 3 hypervisors)",
         "\n".join(f"{n}: {c['action']}, expires {c['not_after']}, names {c['dns']} "
                   f"{c['ips']}" for n, c in sorted(data["certificates"].items())))
