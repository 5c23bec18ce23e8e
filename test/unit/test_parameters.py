"""Per-OS parameters: package names that exist where the formula installs them.

Debian 12's names are proven for real by the lab: its image build downloads every package
of REPO_PACKAGES with apt (an unknown name fails the build) and the lab tier installs them
with the formula. EL names cannot be fetched here; known-wrong ones are refused.
"""
import pytest
import yaml

from kvmtestlib import REPO
from lab import image

PARAMS = REPO / "kvmcluster/parameters"


def family(name):
    return yaml.safe_load((PARAMS / f"os_family/{name}.yaml").read_text())["values"]


def test_debian_packages_are_in_the_lab_repository():
    pkgs = family("Debian")["pkgs"]
    wanted = set(pkgs["kvm"]) | set(pkgs["nfs_server"]) | set(pkgs["nfs_client"]) \
        | set(pkgs["libvirt_python_build"])
    # On a lab node: in its repository, or in the image it boots (a minimal Debian server).
    assert wanted <= set(image.REPO_PACKAGES) | set(image.BASE_PACKAGES)


def test_redhat_packages_exist_on_el9():
    pkgs = family("RedHat")["pkgs"]
    names = set(pkgs["kvm"]) | set(pkgs["nfs_server"]) | set(pkgs["nfs_client"])
    # Gone from EL9 (and never needed with iproute2): must not be asked for.
    assert not names & {"qemu-kvm-tools", "bridge-utils", "libvirt-python", "python-libvirt"}
    assert {"qemu-kvm", "libvirt-daemon-kvm", "python3-libvirt", "nfs-utils"} <= names


@pytest.mark.parametrize("name", ["Debian", "RedHat"])
def test_only_what_the_states_run_is_installed(name):
    """Operators' tools and UEFI firmware are the site's choice (packages:extra): no state
    runs virt-install, and guests boot with the BIOS QEMU ships."""
    pkgs = family(name)["pkgs"]["kvm"]
    assert not set(pkgs) & {"virtinst", "virt-install", "ovmf", "edk2-ovmf", "virt-manager",
                            "virt-viewer"}


def test_el9_runs_modular_daemons():
    major = yaml.safe_load((PARAMS / "osmajor.yaml").read_text())
    assert major["RedHat-9"]["libvirt"]["service"] == "virtqemud.service"
    assert major["RedHat-9"]["libvirt"]["tcp_socket"] == "virtproxyd-tcp.socket"
