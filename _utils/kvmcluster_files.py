"""
Files written by root where someone else may have been first: never through a link.

A share's markers, certificate and key files: root opens each directory on the way with
``O_NOFOLLOW`` relative to the one before (a planted link anywhere on the path is refused,
not followed), creates files under names it chose with ``O_EXCL``, sets owner and mode
through the descriptor, and replaces a file by renaming its own new copy over the name (a
rename replaces a link, it never writes through it). Pure code: no Salt.
"""
import errno
import os
import secrets
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(OSError):
    """A path root will not write through (a link, or not a directory / regular file)."""


def open_dir(base, rel="", make=False, mode=0o755):
    """A descriptor of directory ``base``/``rel``: ``base`` is the operator's own path (a
    mount point from pillar, links allowed), ``rel`` the part below it that others can
    write to, opened component by component without following a link and, with ``make``,
    made where missing (``mode``). The caller closes the descriptor."""
    if not os.path.isabs(base):
        raise Refused(f"{base}: not an absolute path")
    parts = [p for p in rel.split("/") if p]
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            where = os.path.join(base, *parts[:i + 1])
            if part in (".", ".."):
                raise Refused(f"{where}: '{part}' in the path")
            try:
                nxt = _open_below(fd, part, where)
            except FileNotFoundError:
                if not make:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile; opened (never followed) below
                nxt = _open_below(fd, part, where)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_below(fd, part, where):
    """Directory ``part`` below ``fd``, never through a link (ELOOP) or a non-directory."""
    try:
        return os.open(part, DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(f"{where} is a link or not a directory; refused, nothing "
                          "written") from None
        raise


def kind(dir_fd, name):
    """``"file"``, ``"absent"`` or what else is at ``name`` (``"link"``, ``"other"``),
    looked at without following it."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def create(dir_fd, name, data, mode=0o644, owner=None):
    """Make ``name`` in the directory ``dir_fd``, new (it must not exist, not even as a
    link), with ``data`` (bytes), ``mode`` and ``owner`` (uid, gid) set through its
    descriptor before anything is written."""
    fd = os.open(name, NEW_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def replace(dir_fd, name, data, mode=0o644, owner=None):
    """``name`` in ``dir_fd`` holds ``data`` afterwards, all or nothing: a new file under a
    random name, renamed over ``name`` (whatever was there, a link included, is replaced,
    never written through)."""
    tmp = f".{name}.{secrets.token_hex(6)}.new"
    create(dir_fd, tmp, data, mode, owner)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(tmp, dir_fd=dir_fd)
        raise


def read(dir_fd, name, limit=1 << 20):
    """The bytes of regular file ``name`` in ``dir_fd`` (None when absent), never through a
    link; at most ``limit`` bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{name} is a link; refused") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{name} is not a regular file; refused")
        return os.read(fd, limit)
    finally:
        os.close(fd)
