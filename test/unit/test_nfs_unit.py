"""NFS helpers: exports text, the kernel export table, fstab editing, the mount table."""
from kvmtestlib import load_module

nfs = load_module("_modules", "kvmcluster_nfs")
nfs_state = load_module("_states", "kvmcluster_nfs")


def test_exports_text_names_each_client():
    text = nfs.exports_text("/data01/secondary", ["172.30.10.41", "172.30.10.42"],
                            ["rw", "sync", "no_subtree_check", "no_root_squash"])
    assert text.splitlines()[1] == ('"/data01/secondary" '
                                    "172.30.10.41(rw,sync,no_subtree_check,no_root_squash) "
                                    "172.30.10.42(rw,sync,no_subtree_check,no_root_squash)")
    assert "*" not in text


def test_etab_is_read_per_path(tmp_path):
    etab = tmp_path / "etab"
    etab.write_text("/data01/secondary\t172.30.10.42(rw,sync,wdelay,hide,no_root_squash)\n"
                    "/other\t10.0.0.1(ro)\n")
    assert nfs.exported("/data01/secondary", str(etab)) == {
        "172.30.10.42": ["rw", "sync", "wdelay", "hide", "no_root_squash"]}
    assert nfs.exported("/missing", str(tmp_path / "nope")) == {}


def test_fstab_line_is_replaced_not_duplicated():
    fstab = "UUID=1 / ext4 defaults 0 1\n10.0.0.9:/old /mnt/secondary nfs defaults 0 0\n"
    line = "172.30.10.41:/data01/secondary /mnt/secondary nfs vers=4.2,hard 0 0"
    new, old = nfs_state._fstab_diff(fstab, "/mnt/secondary", line)
    assert old == "10.0.0.9:/old /mnt/secondary nfs defaults 0 0"
    assert new.splitlines() == ["UUID=1 / ext4 defaults 0 1", line]
    again, old2 = nfs_state._fstab_diff(new, "/mnt/secondary", line)
    assert again == new and old2 == line


def test_mount_of_reads_the_last_mount(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "40 22 0:40 / /mnt/secondary rw,relatime - nfs4 172.30.10.41:/data01/secondary "
        "rw,vers=4.2,hard\n")
    got = nfs.mount_of("/mnt/secondary", str(info))
    assert got["source"] == "172.30.10.41:/data01/secondary" and got["fstype"] == "nfs4"
    assert nfs.mount_of("/mnt/none", str(info)) is None
