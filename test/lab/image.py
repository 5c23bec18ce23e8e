"""The node image: a debootstrapped Debian bookworm plus a local package repository.

Nodes have no route to the internet, so everything the formula installs on them is
downloaded once here into a repository the controller serves on the lab bridge. The
image is keyed by a hash of its recipe and rebuilt only when the recipe changes.
"""
import hashlib
import inspect
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from . import paths
from .run import run, say

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
RECIPE_VERSION = 5

# What every node boots with: a plain Debian server (ifupdown, sshd, python3 for salt-ssh)
# plus a kernel for VM nodes and systemd-nspawn for container nodes.
BASE_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "procps", "iproute2", "iputils-ping",
    "ifupdown", "openssh-server", "python3", "systemd-container", "linux-image-amd64",
    "less", "netbase",
]

# What the formula (and the lab's tests) install on Debian nodes, without recommends as
# the formula installs them (packages:install_recommends false); served by the lab repo.
REPO_PACKAGES = [
    "qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients",
    "python3-libvirt", "nfs-kernel-server", "nfs-common", "bridge-utils",
    "ifenslave", "network-manager", "netplan.io", "dnsmasq-base", "busybox-static",
    # Firewall and MAC policy as on real hosts; the management node's DNS/DHCP and sudo.
    "firewalld", "apparmor", "dnsmasq", "sudo",
    # libvirt's traffic filters for the guests (clean-traffic; ebtables-nft comes with it).
    "iptables",
    # The nodes' migration keys and signing requests.
    "python3-cryptography",
    # Building libvirt-python into a minion's own Python (onedir-style minions).
    "gcc", "pkg-config", "libvirt-dev", "python3-dev",
    # What docs/install.rst installs on a bare management node (its test runs the guide).
    "git", "python3-venv",
]

# What VM nodes boot with already installed (at native speed, when the disk is made):
# under TCG an install takes half an hour. Container nodes keep proving the install.
VM_PREINSTALLED = [
    "qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients",
    "python3-libvirt", "nfs-kernel-server", "nfs-common", "bridge-utils",
    "ifenslave", "firewalld", "apparmor", "iptables", "python3-cryptography",
]

# A VM node with SELinux enforcing: Debian's reference policy, its tools (what the formula's
# SELinux state uses: semanage, restorecon, setsebool) and the audit daemon for the denials.
# From Debian's mirror when that node's disk is made, not in the lab repository.
SELINUX_PACKAGES = [
    "selinux-policy-default", "selinux-basics", "selinux-utils", "policycoreutils",
    "policycoreutils-python-utils", "auditd",
]

# Python packages the lab serves (pip --find-links) for minions with their own Python.
PYTHON_SDISTS = ["libvirt-python==9.0.0", "setuptools", "wheel"]


def recipe_key():
    blob = json.dumps([RECIPE_VERSION, SUITE, BASE_PACKAGES, REPO_PACKAGES, PYTHON_SDISTS],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def image_dir():
    return paths.CACHE / f"image-{recipe_key()}"


def rootfs():
    return image_dir() / "rootfs"


def repo_dir():
    return image_dir() / "repo"


def ensure_ssh_key():
    key = paths.SSH_KEY
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvmcluster-lab", "-f", key])
    return key


@contextmanager
def _chroot_mounts(root):
    mounted = []
    try:
        for src, dst, kind in (("proc", "proc", "proc"), ("/dev", "dev", "bind"),
                               ("/dev/pts", "dev/pts", "bind")):
            target = root / dst
            target.mkdir(parents=True, exist_ok=True)
            if kind == "bind":
                run(["mount", "--bind", src, target])
            else:
                run(["mount", "-t", kind, src, target])
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            run(["umount", "-l", target], check=False)


def _chroot(root, *argv):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}
    run(["chroot", root, *argv], env=env)


def build(force=False):
    """Build the image and the repository unless a finished one exists."""
    done = image_dir() / "done.json"
    if done.exists() and not force:
        return image_dir()
    key = ensure_ssh_key()
    work = image_dir()
    if work.exists():
        shutil.rmtree(work)
    root = work / "rootfs"
    root.mkdir(parents=True)
    say(f"building node image in {work} (debootstrap {SUITE}, a few minutes once)")
    log = work / "build.log"
    say(f"debootstrap output: {log}")
    with open(log, "w") as fh:
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR],
                       stdout=fh, stderr=subprocess.STDOUT, check=True)
    # The kernel's postinst wants a real initramfs tool config and no running kernel checks.
    (root / "etc/kernel-img.conf").write_text("do_symlinks = yes\nlink_in_boot = yes\n")
    with _chroot_mounts(root):
        _chroot(root, "apt-get", "update", "-qq")
        _chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *BASE_PACKAGES)
        say("downloading the formula's packages into the lab repository")
        # Each package's own closure as well as the whole set's: a node installs them in
        # groups, and where a dependency has alternatives the choice depends on the group.
        for pkgs in [[p] for p in REPO_PACKAGES] + [REPO_PACKAGES]:
            _chroot(root, "apt-get", "install", "-y", "-qq", "--download-only",
                    "--no-install-recommends", *pkgs)
    repo = work / "repo"
    repo.mkdir()
    archives = root / "var/cache/apt/archives"
    for deb in archives.glob("*.deb"):
        shutil.move(str(deb), repo / deb.name)
    _index_repo(repo)
    _python_packages(repo / "python")
    _configure(root, key)
    (work / "done.json").write_text(json.dumps({"key": recipe_key(), "repo_debs": len(list(repo.glob("*.deb")))}))
    say(f"image ready: {len(list(repo.glob('*.deb')))} packages in the lab repository")
    return work


def _python_packages(dest):
    """Sources and wheels from PyPI, served to the nodes as a --find-links directory."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [str(paths.REPO_ROOT / ".venv/bin/python"), "-m", "pip", "download", "-q",
           "--no-deps", "-d", str(dest)]
    run(pip + ["--no-binary", ":all:", PYTHON_SDISTS[0]])
    run(pip + ["--only-binary", ":all:", *PYTHON_SDISTS[1:]])


def _index_repo(repo):
    listing = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
    (repo / "Packages").write_text(listing)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
    (repo / "Release").write_text(release)


def _configure(root, key):
    # Nodes reach only the controller's repository; Debian's mirror is not routable there.
    (root / "etc/apt/sources.list").write_text(
        "deb [trusted=yes] http://172.30.10.1:8080/ ./\n")
    for stale in (root / "etc/apt/sources.list.d").glob("*"):
        stale.unlink()
    run(["rm", "-rf", str(root / "var/lib/apt/lists"), str(root / "var/cache/apt/archives")])
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    # Host keys and machine-id are written per node before its first boot.
    for hk in (root / "etc/ssh").glob("ssh_host_*"):
        hk.unlink()
    (root / "etc/machine-id").write_text("")
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(Path(str(key) + ".pub").read_text())
    os.chmod(ssh / "authorized_keys", 0o600)
    (root / "etc/ssh/sshd_config.d/lab.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    # A console on a passive nspawn terminal blocks PID 1; containers have none.
    for unit in ("getty@tty1.service", "console-getty.service"):
        link = root / "etc/systemd/system" / unit
        if not link.exists():
            link.symlink_to("/dev/null")
    (root / "etc/fstab").write_text("# per node\n")
    lab_files(root)


def vm_tree(dest, selinux=False):
    """A copy of the rootfs with VM_PREINSTALLED installed from the lab repository (and with
    ``selinux``, SELINUX_PACKAGES from Debian's mirror, enforcing, every file labelled)."""
    if dest.exists():
        shutil.rmtree(dest)
    run(["cp", "-a", rootfs(), dest])
    mnt = dest / "mnt/lab-repo"
    mnt.mkdir(parents=True, exist_ok=True)
    sources = dest / "etc/apt/sources.list"
    served = sources.read_text()
    sources.write_text("deb [trusted=yes] file:/mnt/lab-repo ./\n")
    # Nothing starts inside the chroot; units are enabled and start when the VM boots.
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    os.chmod(policy, 0o755)
    run(["mount", "--bind", "-o", "ro", repo_dir(), mnt])
    try:
        with _chroot_mounts(dest):
            _chroot(dest, "apt-get", "update", "-qq")
            _chroot(dest, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    *VM_PREINSTALLED)
            if selinux:
                sources.write_text(f"deb {MIRROR} {SUITE} main\n")
                _chroot(dest, "apt-get", "update", "-qq")
                _chroot(dest, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *SELINUX_PACKAGES)
            _chroot(dest, "apt-get", "clean")
            if selinux:
                (dest / "etc/selinux/config").write_text(
                    "SELINUX=enforcing\nSELINUXTYPE=default\n")
                # Labels as Debian's selinux-activate would have them after its relabel.
                _chroot(dest, "setfiles", "-F", "-e", "/proc", "-e", "/dev", "-e", "/sys",
                        "-e", "/mnt/lab-repo", "/etc/selinux/default/contexts/files/file_contexts",
                        "/")
    finally:
        run(["umount", "-l", mnt], check=False)
    policy.unlink()
    sources.write_text(served)
    run(["rm", "-rf", str(dest / "var/lib/apt/lists")])
    (dest / "var/lib/apt/lists/partial").mkdir(parents=True)
    return dest


FIRSTBOOT_UNIT = """[Unit]
Description=Lab VM node first-boot configuration
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target networking.service ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lab-firstboot
RemainAfterExit=yes

[Install]
WantedBy=sysinit.target
"""


def lab_files_key():
    """Changes whenever lab_files() would write something else (VM base disks follow it)."""
    blob = (Path(__file__).parent / "firstboot.sh").read_text() + FIRSTBOOT_UNIT + \
        inspect.getsource(lab_files)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def lab_files(root):
    """The lab's own files in the image; idempotent and cheap, rewritten at every `up`."""
    script = root / "usr/local/sbin/lab-firstboot"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text((Path(__file__).parent / "firstboot.sh").read_text())
    os.chmod(script, 0o755)
    (root / "etc/systemd/system/lab-firstboot.service").write_text(FIRSTBOOT_UNIT)
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "lab-firstboot.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/lab-firstboot.service")
    # VM nodes boot the kernel and initrd the lab hands to qemu, never their own /boot:
    # regenerating initramfs inside a TCG node (minutes, on every kernel-module package)
    # would only burn time. Man pages likewise.
    conf = root / "etc/initramfs-tools/update-initramfs.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# lab: nodes boot the kernel/initrd given by the lab\nupdate_initramfs=no\n"
                    "backup_initramfs=no\n")
    (root / "etc/dpkg/dpkg.cfg.d/lab-nodoc").write_text(
        "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/doc/*\n"
        "path-include=/usr/share/doc/*/copyright\n")
    # root's systemd user manager, once started by a login, stays up: in container nodes,
    # stopping it 10 s after the last SSH session hangs on the host's cgroup freezer
    # ("Failed to thaw slice") and holds the next session for the stop timeout.
    linger = root / "var/lib/systemd/linger/root"
    if linger.exists():
        linger.unlink()
    logind = root / "etc/systemd/logind.conf.d"
    logind.mkdir(parents=True, exist_ok=True)
    (logind / "lab.conf").write_text("[Login]\nUserStopDelaySec=infinity\n")
    # Races with the container's runlevel change now and then; utmp is nothing to the lab.
    mask = root / "etc/systemd/system/systemd-update-utmp-runlevel.service"
    if not mask.is_symlink():
        mask.symlink_to("/dev/null")
