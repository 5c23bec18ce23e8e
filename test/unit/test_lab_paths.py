"""The lab's formula root points at this checkout, whatever another checkout left there."""
import os

from lab import paths


def test_a_link_left_by_another_checkout_is_pointed_here_again(tmp_path):
    where = tmp_path / "formula"
    where.mkdir()
    (where / "_modules").symlink_to(tmp_path / "elsewhere" / "_modules")
    paths.formula_root(where)
    for name in paths.FORMULA_DIRS:
        assert os.readlink(where / name) == str(paths.REPO_ROOT / name), name
    before = os.lstat(where / "_states").st_ino
    paths.formula_root(where)  # already right: left as it is
    assert os.lstat(where / "_states").st_ino == before
