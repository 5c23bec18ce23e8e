"""The root-squashed export (the default): kvmcluster_nfs.exported on a real directory under
a temporary root, with the NFS commands recorded. A client's root acts as the server's QEMU
account; the export directory is that account's, mode 0750; test=True says what the real
run does; a link in the export's place is refused."""
import copy
import os

import pytest

from kvmtestlib import DELETE, SEED_PILLAR, edit_pillar, formula_values, load_module, \
    utils_dunder

model = load_module("_modules", "kvmcluster_model")
nfs_mod = load_module("_modules", "kvmcluster_nfs")
ACCOUNT = {"name": "libvirt-qemu", "uid": 64055, "gid": 64056}
CLIENTS = "172.30.10.41(rw,sync,no_subtree_check,root_squash,anonuid=64055,anongid=64056)"


def view(export_path, options=None):
    # The formula's defaults unless a test names the options.
    changes = {"storage:secondary:export_path": export_path,
               "storage:secondary:export_options": DELETE if options is None else options}
    built, errors = model.build(edit_pillar(SEED_PILLAR["kvmcluster"], changes),
                                formula_values()["cluster"])
    assert not errors, errors
    return model.node_view(built, "kvm01")


class Server:
    """The NFS server's side of the host: files in the temporary root, a recorded etab."""

    def __init__(self, tmp_path):
        self.files, self.etab, self.calls = {}, {}, []
        self.exports = str(tmp_path / "kvmcluster.exports")

    def salt(self, v, account=ACCOUNT):
        def write(path, text):
            self.files[path] = text
            self.calls.append(("write", path))

        def reexport():
            self.calls.append(("exportfs -ra",))
            self.etab = {c: ["rw"] for c in v["storage"]["secondary"]["clients"]}

        return {
            "kvmcluster_model.current": lambda: copy.deepcopy(v),
            "kvmcluster_node.qemu_account": lambda: account,
            "kvmcluster_node.local_address": lambda a: True,
            "kvmcluster_node.file_text": self.files.get,
            "kvmcluster_node.write_file": write,
            "kvmcluster_node.unit_state": lambda u: {"enabled": "enabled", "active": True,
                                                     "label": "enabled/active"},
            "kvmcluster_node.systemctl": lambda *a: self.calls.append(a),
            "kvmcluster_nfs.exports_text": nfs_mod.exports_text,
            "kvmcluster_nfs.exported": lambda p: dict(self.etab),
            "kvmcluster_nfs.reexport": reexport,
        }

    def run(self, v, test=False, account=ACCOUNT):
        st = load_module("_states", "kvmcluster_nfs")
        st.__salt__ = self.salt(v, account)
        st.__opts__ = {"test": test}
        st.__utils__ = utils_dunder()
        st.__context__ = {}
        return st.exported("e", exports_file=self.exports, service="nfs-server.service")


def test_the_default_export_squashes_root_to_the_qemu_account(tmp_path):
    export = tmp_path / "data01" / "secondary"
    v = view(str(export))
    assert v["storage"]["secondary"]["export_options"] == [
        "rw", "sync", "no_subtree_check", "root_squash"]
    server = Server(tmp_path)
    predicted = server.run(v, test=True)
    assert not export.exists() and server.calls == []
    real = server.run(v)
    assert predicted["result"] is None and real["result"] is True, real
    assert predicted["changes"] == real["changes"]
    assert real["changes"]["export_dir"] == {"old": None, "new": f"{export} 64055:64056 0750"}
    st = os.stat(export)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (64055, 64056, 0o750)
    line = server.files[server.exports].splitlines()[1]
    assert line.startswith(f'"{export}" {CLIENTS} ')
    assert "no_root_squash" not in server.files[server.exports]
    again = server.run(v)
    assert (again["result"], again["changes"]) == (True, {})


def test_an_export_directory_of_root_is_given_to_the_qemu_account(tmp_path):
    export = tmp_path / "secondary"
    export.mkdir(mode=0o755)
    (export / "old-disk.qcow2").write_text("x")  # root's, from before the squash
    v = view(str(export))
    server = Server(tmp_path)
    predicted = server.run(v, test=True)
    real = server.run(v)
    assert predicted["changes"]["export_dir"] == real["changes"]["export_dir"] == {
        "old": f"{export} 0:0 0755", "new": f"{export} 64055:64056 0750"}
    # The site's files stay as they are; the operator is told which ones clients cannot open.
    assert os.stat(export / "old-disk.qcow2").st_uid == 0
    assert "1 file(s) there are not uid 64055's (old-disk.qcow2)" in real["comment"]


def test_a_link_in_the_exports_place_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "etc"
    victim.mkdir(mode=0o700)
    export = tmp_path / "secondary"
    export.symlink_to(victim)
    v = view(str(export))
    server = Server(tmp_path)
    for test in (True, False):
        ret = server.run(v, test=test)
        assert ret["result"] is False and ret["changes"] == {}
        assert "is not a directory (a link or a file)" in ret["comment"]
    st = os.stat(victim)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700) and server.calls == []


def test_no_root_squash_only_when_asked(tmp_path):
    export = tmp_path / "secondary"
    v = view(str(export), ["rw", "sync", "no_root_squash"])
    server = Server(tmp_path)
    real = server.run(v, account=None)  # no QEMU account needed: nothing is mapped to it
    assert real["result"] is True, real
    assert real["changes"]["export_dir"] == {"old": None, "new": str(export)}
    assert "anonuid" not in server.files[server.exports]
    assert os.stat(export).st_uid == 0


def test_a_server_without_a_qemu_account_cannot_squash_to_it(tmp_path):
    v = view(str(tmp_path / "secondary"))
    server = Server(tmp_path)
    ret = server.run(v, account=None)
    assert ret["result"] is False and server.calls == []
    assert ret["comment"].startswith("the export squashes root to the QEMU account, and kvm01 "
                                     "has none")
    # Named by the site: used as they are.
    named = view(str(tmp_path / "secondary"), ["rw", "root_squash", "anonuid=107",
                                                "anongid=107"])
    ret = server.run(named, account=None)
    assert ret["result"] is True, ret
    assert "(rw,root_squash,anonuid=107,anongid=107)" in server.files[server.exports]
    assert os.stat(tmp_path / "secondary").st_uid == 107


@pytest.mark.parametrize("options, expect", [
    (["rw", "root_squash", "no_root_squash"], "has both root_squash and no_root_squash"),
    (["rw", "anonuid=qemu"], "'anonuid=qemu': anonuid and anongid take a number"),
])
def test_export_options_that_contradict_or_name_no_number_are_refused(options, expect):
    built, errors = model.build(edit_pillar(SEED_PILLAR["kvmcluster"], {
        "storage:secondary:export_options": options}), formula_values()["cluster"])
    assert built is None
    assert f"[cluster] kvmcluster:storage:secondary:export_options: {expect}" in \
        [str(e) for e in errors]


def test_a_live_no_root_squash_export_with_roots_files_is_not_squashed_in_silence(tmp_path):
    """An upgrade from the old default (no_root_squash): the share holds root's disks; the
    state refuses to squash (the clients could no longer open them) and says what to do."""
    export = tmp_path / "secondary"
    export.mkdir(mode=0o755)
    (export / "web1.qcow2").write_text("x")
    v = view(str(export))
    server = Server(tmp_path)
    server.etab = {"172.30.10.41": ["rw", "sync", "no_root_squash"]}
    for test in (True, False):
        ret = server.run(v, test=test)
        assert ret["result"] is False and ret["changes"] == {} and server.calls == []
        assert ret["comment"] == (
            f"{export} is exported with no_root_squash and 1 file(s) there are not uid "
            "64055's (web1.qcow2): squashing root would close them to the clients. chown them "
            "to the QEMU account (uid 64055) first, or set "
            "kvmcluster:storage:secondary:export_options with no_root_squash")
    os.chown(export / "web1.qcow2", 64055, 64056)
    real = server.run(v)
    assert real["result"] is True, real


def test_the_default_mount_runs_nothing_from_the_share():
    built, errors = model.build(edit_pillar(SEED_PILLAR["kvmcluster"], {
        "storage:secondary:mount_options": DELETE}), formula_values()["cluster"])
    assert not errors, errors
    opts = built["storage"]["secondary"]["mount_options"]
    assert {"nosuid", "nodev", "noexec"} <= set(opts), opts
