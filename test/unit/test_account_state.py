"""kvmcluster_account.present, the real entry point, on real files under a temporary root:
keys and sudo granted, test=True equal to the real run, revocation that revokes, and the
account's ~/.ssh handled as OpenSSH's StrictModes would (no link followed, no foreign file)."""
import copy
import os
import pwd

import pytest

from kvmtestlib import (SEED_PILLAR, fake_pubkey, formula_values, load_module, utils_dunder,
                        visudo_run_all)

model = load_module("_modules", "kvmcluster_model")
account = load_module("_states", "kvmcluster_account")
DEFAULTS = formula_values()["cluster"]
KEY = fake_pubkey("operator", comment="op@mgmt")
SITE = fake_pubkey("site", comment="site@host")
_visudo = visudo_run_all


class Host:
    """A node under ``root``: accounts with homes there, the sudoers drop-in and the record."""

    def __init__(self, root, monkeypatch):
        self.root = root
        (root / "etc/sudoers.d").mkdir(parents=True)
        self.sudoers = root / "etc/sudoers.d/kvmcluster"
        self.record = root / "var/lib/kvmcluster/accounts.json"
        monkeypatch.setattr(account, "SUDOERS", str(self.sudoers))
        monkeypatch.setattr(account, "RECORD", str(self.record))
        self.users = {}
        real = pwd.getpwnam

        def getpwnam(user):
            if user in self.users:
                return self.users[user]
            if user in ("kvmadmin", "ops"):
                raise KeyError(user)
            return real(user)

        monkeypatch.setattr(account.pwd, "getpwnam", getpwnam)
        account.__utils__ = utils_dunder()
        account.__opts__ = {"test": False}

    def add_user(self, user, uid=None):
        home = self.root / "home" / user
        home.mkdir(parents=True)
        uid = os.getuid() if uid is None else uid
        self.users[user] = pwd.struct_passwd((user, "x", uid, uid, "", str(home), "/bin/sh"))
        return home

    def run(self, edit=None, test=False):
        pillar = copy.deepcopy(SEED_PILLAR["kvmcluster"])
        pillar["account"]["ssh_keys"] = [KEY]
        for k, v in (edit or {}).items():
            pillar["account"][k] = v
        built, errors = model.build(pillar, DEFAULTS)
        assert not errors, errors
        view = model.node_view(built, "kvm02")
        account.__opts__ = {"test": test}
        account.__salt__ = {
            "kvmcluster_model.current": lambda: view,
            "user.info": lambda u: {"groups": ["libvirt", "kvm"]} if u in self.users else {},
            "group.info": lambda g: {"name": g},
            "cmd.run_all": _visudo,
            "pkg.version": lambda *names, **kw: {n: "1.0" for n in names},
        }
        return account.present("kvmcluster-libvirt-account-present", packages=["sudo"])


@pytest.fixture
def host(tmp_path, monkeypatch):
    return Host(tmp_path, monkeypatch)


def test_grants_keys_and_sudo_test_equal_to_real_then_nothing(host):
    home = host.add_user("kvmadmin")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh/authorized_keys").write_text(SITE + "\n")
    predicted = host.run(test=True)
    assert predicted["result"] is None
    assert not host.sudoers.exists()
    real = host.run()
    assert real["result"] is True, real["comment"]
    assert real["changes"] == predicted["changes"]
    assert set(real["changes"]) == {"ssh_keys", str(host.sudoers)}
    lines = (home / ".ssh/authorized_keys").read_text().splitlines()
    assert lines == [SITE, account.BEGIN, KEY, account.END]
    assert oct((home / ".ssh/authorized_keys").stat().st_mode & 0o777) == "0o600"
    assert "kvmadmin ALL=(ALL:ALL) NOPASSWD: ALL" in host.sudoers.read_text()
    again = host.run()
    assert again["result"] is True and again["changes"] == {}


@pytest.mark.parametrize("how", ["state: absent", "removed from pillar", "renamed"])
def test_revocation_removes_sudo_and_the_formulas_keys(host, how):
    home = host.add_user("kvmadmin")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh/authorized_keys").write_text(SITE + "\n")
    assert host.run()["result"] is True
    assert host.sudoers.exists()
    edit = {"state: absent": {"state": "absent"}, "removed from pillar": {"name": None,
            "ssh_keys": []}, "renamed": {"name": "ops"}}[how]
    if how == "renamed":
        host.add_user("ops")
    predicted = host.run(edit, test=True)
    real = host.run(edit)
    assert real["result"] is True, real["comment"]
    assert real["changes"] == predicted["changes"]
    assert real["changes"]["revoked:kvmadmin"] == {"old": [" ".join(KEY.split()[:2])],
                                                   "new": []}
    # The site's key stays; the formula's block is gone.
    assert (home / ".ssh/authorized_keys").read_text() == SITE + "\n"
    if how == "renamed":
        assert host.sudoers.read_text().splitlines()[1].startswith("ops ALL=")
        assert KEY in (host.root / "home/ops/.ssh/authorized_keys").read_text()
    else:
        assert not host.sudoers.exists()
    assert host.run(edit)["changes"] == {}


def test_sudo_false_removes_the_grant(host):
    host.add_user("kvmadmin")
    host.run()
    real = host.run({"sudo": False})
    assert real["result"] is True and not host.sudoers.exists()
    assert real["changes"][str(host.sudoers)]["new"] is None


def _trap_target(root):
    target = root / "victim"
    target.mkdir()
    (target / "shadow").write_text("root:$6$secret:19000::::::\n")
    os.chmod(target / "shadow", 0o640)
    return target


def _untouched(target):
    assert sorted(os.listdir(target)) == ["shadow"]
    assert (target / "shadow").read_text() == "root:$6$secret:19000::::::\n"
    st = (target / "shadow").stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_uid == 0


def test_symlinked_ssh_dir_is_refused_and_its_target_untouched(host):
    home = host.add_user("kvmadmin")
    target = _trap_target(host.root)
    os.symlink(target, home / ".ssh")
    for test in (True, False):
        ret = host.run(test=test)
        assert ret["result"] is False
        assert ".ssh is a symbolic link or not a directory" in ret["comment"]
    _untouched(target)
    assert not host.sudoers.exists()


def test_symlinked_authorized_keys_is_refused_and_its_target_untouched(host):
    home = host.add_user("kvmadmin")
    target = _trap_target(host.root)
    (home / ".ssh").mkdir(mode=0o700)
    os.symlink(target / "shadow", home / ".ssh/authorized_keys")
    ret = host.run()
    assert ret["result"] is False
    assert "authorized_keys is a symbolic link" in ret["comment"]
    _untouched(target)


def test_foreign_or_open_ssh_dir_and_a_fifo_are_refused(host):
    home = host.add_user("kvmadmin")
    (home / ".ssh").mkdir(mode=0o700)
    os.chown(home / ".ssh", 12345, 12345)
    ret = host.run()
    assert ret["result"] is False and "belongs to uid 12345" in ret["comment"]
    os.chown(home / ".ssh", 0, 0)
    os.chmod(home / ".ssh", 0o777)
    ret = host.run()
    assert ret["result"] is False and "writable by group or others" in ret["comment"]
    os.chmod(home / ".ssh", 0o700)
    os.mkfifo(home / ".ssh/authorized_keys")
    ret = host.run()  # returns: the FIFO is opened non-blocking, then refused
    assert ret["result"] is False and "not a regular file" in ret["comment"]


def test_a_link_planted_at_the_temporary_name_is_never_written_through(host, monkeypatch):
    home = host.add_user("kvmadmin")
    (home / ".ssh").mkdir(mode=0o700)
    target = _trap_target(host.root)
    # The account predicts the temporary name: it is random, and created O_EXCL|O_NOFOLLOW.
    monkeypatch.setattr(account.secrets, "token_hex", lambda n: "0" * (2 * n))
    os.symlink(target / "shadow", home / f".ssh/.authorized_keys.kvmcluster-{'0' * 16}")
    ret = host.run()
    assert ret["result"] is False
    _untouched(target)


def test_the_sudoers_path_is_read_when_called(host):
    """A test's path is used: the default is not bound when the module is imported."""
    host.add_user("kvmadmin")
    account.__salt__ = {"cmd.run_all": _visudo}
    account._install_sudoers(account._sudoers_text("ops"))
    assert host.sudoers.read_text().splitlines()[1].startswith("ops ALL=")
