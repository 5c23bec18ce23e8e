"""Every command the formula runs on a node exists there: it comes from a package every
supported host has, or from a package the formula's map installs for that OS family before
the state that runs it. Which package provides a command is recorded here (dpkg -S on
Debian 12, rpm -qf on Rocky 9); the map is what is checked."""
import re

import pytest
import yaml

from kvmtestlib import REPO

# command: {family: providing package}
PROVIDERS = {
    "ip": {"Debian": "iproute2", "RedHat": "iproute"},
    "bridge": {"Debian": "iproute2", "RedHat": "iproute"},
    "ss": {"Debian": "iproute2", "RedHat": "iproute"},
    "systemctl": {"Debian": "systemd", "RedHat": "systemd"},
    "systemd-run": {"Debian": "systemd", "RedHat": "systemd"},
    "networkctl": {"Debian": "systemd", "RedHat": "systemd"},
    "sysctl": {"Debian": "procps", "RedHat": "procps-ng"},
    "modprobe": {"Debian": "kmod", "RedHat": "kmod"},
    "timeout": {"Debian": "coreutils", "RedHat": "coreutils"},
    "ping": {"Debian": "iputils-ping", "RedHat": "iputils"},
    "exportfs": {"Debian": "nfs-kernel-server", "RedHat": "nfs-utils"},
    "nmcli": {"Debian": "network-manager", "RedHat": "NetworkManager"},
    "netplan": {"Debian": "netplan.io"},
    "ifup": {"Debian": "ifupdown", "RedHat": "network-scripts"},
    "ifdown": {"Debian": "ifupdown", "RedHat": "network-scripts"},
    "semanage": {"Debian": "policycoreutils-python-utils",
                 "RedHat": "policycoreutils-python-utils"},
    "restorecon": {"Debian": "policycoreutils", "RedHat": "policycoreutils"},
    "setsebool": {"Debian": "policycoreutils", "RedHat": "policycoreutils"},
    "getsebool": {"Debian": "selinux-utils", "RedHat": "libselinux-utils"},
    "visudo": {"Debian": "sudo", "RedHat": "sudo"},
    # Run only where `firewall-cmd --state` says firewalld runs.
    "firewall-cmd": {"Debian": "firewalld", "RedHat": "firewalld"},
}

# On every supported host (minimal installs included; policycoreutils and libselinux-utils
# wherever SELinux is enabled on EL).
BASE = {
    "Debian": {"iproute2", "systemd", "procps", "kmod", "coreutils"},
    "RedHat": {"iproute", "systemd", "procps-ng", "kmod", "coreutils", "policycoreutils",
               "libselinux-utils"},
}
# Which map group installs what a command of that kind needs, before it runs.
GROUP = {
    "ping": "kvm", "exportfs": "nfs_server", "nmcli": "network:networkmanager",
    "netplan": "network:netplan", "ifup": "network:ifupdown|network:ifcfg",
    "ifdown": "network:ifupdown|network:ifcfg", "semanage": "selinux",
    "restorecon": "selinux", "visudo": "account", "setsebool": "selinux", "getsebool": "selinux",
}
CONDITIONAL = {"firewall-cmd"}


def family_map(family):
    values = yaml.safe_load((REPO / "kvmcluster/parameters/defaults.yaml").read_text())["values"]
    fam = yaml.safe_load((REPO / f"kvmcluster/parameters/os_family/{family}.yaml").read_text())
    pkgs = dict(values["pkgs"])
    pkgs.update(fam["values"]["pkgs"])
    return pkgs, fam["values"]["supported_backends"]


def group_pkgs(pkgs, group):
    if group.startswith("network:"):
        return pkgs["network"].get(group.split(":", 1)[1], [])
    return pkgs.get(group, [])


def commands_in_source():
    """Commands the modules and states run: the head of every argv list they build."""
    found = set()
    pattern = re.compile(r'\[\s*"([a-z][a-z0-9-]*)"\s*,')
    for path in [*(REPO / "_modules").glob("*.py"), *(REPO / "_states").glob("*.py")]:
        for word in pattern.findall(path.read_text()):
            found.add(word)
    return found & set(PROVIDERS) | {w for w in _run_heads()}


def _run_heads():
    heads = set()
    pattern = re.compile(r'(?:_run|_cmd)\(\s*"([a-z][a-z0-9-]*)"')
    for path in [*(REPO / "_modules").glob("*.py"), *(REPO / "_states").glob("*.py")]:
        heads.update(pattern.findall(path.read_text()))
    return {h for h in heads if not h.startswith("-")}


def test_every_command_run_is_known():
    unknown = _run_heads() - set(PROVIDERS)
    assert not unknown, f"record the package of {sorted(unknown)} in PROVIDERS"
    assert {"semanage", "restorecon", "getsebool", "setsebool", "exportfs", "nmcli",
            "ip", "systemctl", "ss", "visudo"} <= commands_in_source()


@pytest.mark.parametrize("family", ["Debian", "RedHat"])
def test_commands_come_from_installed_packages(family):
    pkgs, backends = family_map(family)
    missing = []
    for cmd in sorted(commands_in_source()):
        provider = PROVIDERS[cmd].get(family)
        if provider is None:
            # A backend that does not exist on this family (netplan on EL) is never chosen.
            assert cmd == "netplan" and "netplan" not in backends, cmd
            continue
        if provider in BASE[family] or cmd in CONDITIONAL:
            continue
        groups = GROUP[cmd].split("|")
        usable = [g for g in groups if not g.startswith("network:")
                  or g.split(":", 1)[1] in backends]
        if not any(provider in group_pkgs(pkgs, g) for g in usable):
            missing.append(f"{cmd} ({provider}) not in pkgs:{' or pkgs:'.join(usable)}")
    assert not missing, missing
