"""
The one skeleton every kvmcluster state follows, from ``__utils__["kvmcluster_state.skeleton"]()``.

A state describes itself as a plan: ``diff()`` computes the changes as ``{key: {"old", "new"}}``
before anything is touched; compliant means no changes and an early return; under test=True
the same changes are reported with ``result=None``; otherwise ``apply(changes)`` runs and
``verify()`` re-reads the host: whatever still differs fails the state. Exceptions become a
failed state with their reason, never a traceback in the operator's output.

The skeleton is a plain object: its methods run as ordinary calls inside the state's own
loader context, so the state's callbacks keep their ``__salt__`` and ``__opts__`` (a function
called through ``__utils__`` would run them in the utils loader's context instead).
"""


class Refused(Exception):
    """The state cannot go on (bad host state, missing prerequisite): fails with this text."""


class Skeleton:
    """diff -> test -> apply -> verify, and the package helpers the states share."""

    Refused = Refused

    def ret(self, name, result=True, comment="", changes=None):
        """A state return dict."""
        return {"name": name, "result": result, "comment": comment, "changes": changes or {}}

    def not_a_hypervisor(self, name, view):
        """A return for a hypervisor-only state on a management-only node, else None."""
        me = view["self"]
        if me.get("hypervisor", True):
            return None
        return self.ret(name, True, f"{me['name']} is a management node, not a hypervisor "
                        "(roles): nothing to do here")

    def converge(self, name, test, diff, apply, verify=None, ok="compliant", planned="would change",
                 done="changed"):
        """
        Run one state: ``diff() -> changes``; ``apply(changes) -> note or None``;
        ``verify() -> what still differs (falsy when the host matches)``.

        ``ok``, ``planned`` and ``done`` are comments; each may be a callable of the changes.
        """
        def say(text, changes):
            return text(changes) if callable(text) else text

        try:
            changes = diff()
        except Exception as exc:  # pylint: disable=broad-except
            return self.ret(name, False, str(exc))
        if not changes:
            return self.ret(name, True, say(ok, changes))
        if test:
            return self.ret(name, None, say(planned, changes), changes)
        try:
            note = apply(changes)
            left = verify() if verify else None
        except Exception as exc:  # pylint: disable=broad-except
            return self.ret(name, False, str(exc), changes)
        if left:
            return self.ret(name, False, f"still differs after applying: {left}", changes)
        comment = say(done, changes)
        if note:
            comment = f"{comment}; {note}"
        return self.ret(name, True, comment, changes)

    def _versions(self, salt, names, fn, **kwargs):
        got = salt[fn](*names, **kwargs) if names else {}
        if isinstance(got, str):  # one name asked: Salt returns the bare string
            got = {names[0]: got}
        return {n: got.get(n) or None for n in names}

    def packages_diff(self, salt, names, test):
        """
        ``{name: {"old": None, "new": version}}`` for the packages of ``names`` not installed.
        The same both ways: under test the version is the candidate the package manager would
        install; the real run reports the version it installed, per name asked (never the
        dependencies a real install pulls in and a prediction cannot know).
        """
        names = list(dict.fromkeys(names))
        have = self._versions(salt, names, "pkg.version")
        missing = [n for n in names if not have[n]]
        if not missing:
            return {}
        candidate = self._versions(salt, missing, "pkg.latest_version", refresh=True) if test else {}
        return {n: {"old": None, "new": candidate.get(n) or "latest"} for n in missing}

    def recommends(self, salt):
        """APT installs a package's recommends only where the model allows them
        (``packages:install_recommends``, false: a headless hypervisor needs no GUI)."""
        try:
            family = salt["grains.get"]("os_family")
        except KeyError:  # a loader without grains: no APT options
            return {}
        if family != "Debian":
            return {}
        try:
            allow = salt["kvmcluster_model.current"]()["packages"]["install_recommends"]
        except Exception:  # pylint: disable=broad-except
            allow = False
        return {} if allow else {"install_recommends": False}

    def packages_install(self, salt, changes, **kwargs):
        """Install the names of a packages_diff and fill in the versions installed."""
        names = list(changes)
        if "install_recommends" not in kwargs:
            kwargs.update(self.recommends(salt))
        salt["pkg.install"](pkgs=names, refresh=True, **kwargs)
        got = self._versions(salt, names, "pkg.version")
        for n in names:
            changes[n]["new"] = got[n]
        missing = [n for n in names if not got[n]]
        if missing:
            raise self.Refused(f"not installed after installing: {', '.join(missing)}")


_SKELETON = Skeleton()


def skeleton():
    """The shared skeleton object (see the module's docstring)."""
    return _SKELETON
