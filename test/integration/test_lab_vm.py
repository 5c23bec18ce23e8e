"""The VM node driver: a qemu (TCG) node with its own Debian kernel, two NICs and a /data01
disk, reached over real salt-ssh. Runs last: it replaces the container lab with a VM lab."""
import json

import pytest

from lab import control

from conftest import Lab


@pytest.fixture(scope="module")
def vm_lab(lab):  # noqa: ARG001  (after the container lab's tests)
    control.down()
    state = control.up(containers=0, vms=1)
    yield Lab(state)
    control.down()


def test_vm_node_has_its_own_kernel(vm_lab):
    node = vm_lab.nodes[0].name
    out = vm_lab.ssh(node, "modprobe bonding && cat /sys/class/net/bonding_masters; "
                           "findmnt -n -o SOURCE,FSTYPE /data01; ls /sys/class/net; "
                           "systemctl is-system-running")
    assert "/dev/vdb ext4" in out          # a real block device, not a bind mount
    assert "eth0" in out and "eth1" in out  # two NICs, for bonds
    assert out.split()[-1] == "running"



def test_vm_node_over_salt_ssh(vm_lab):
    results, proc = vm_lab.apply("kvmcluster.info")
    assert proc.returncode == 0, proc.stdout[-2000:]
    node = vm_lab.nodes[0].name
    key = next(k for k in results[node] if k.endswith("_|-reported"))
    facts = json.loads(results[node][key]["comment"])
    assert facts["id"] == node and facts["model"]["ip"] == vm_lab.ip[node]
