"""
States for the libvirt daemon of a kvmcluster node.

- ``config_managed``: libvirtd.conf key by key and the socket units' group/mode drop-ins,
  from the model's ``libvirt`` settings. Never an unauthenticated TCP listener; TLS only
  when enabled and its files exist.
- ``sockets_managed``: the TCP socket off, the TLS socket on only with TLS.
- ``running``: the daemon and its sockets enabled and active.
- ``restarted``: one restart, sockets included, for ``onchanges`` of the config.
"""
import importlib
import os
import sys
import time

__virtualname__ = "kvmcluster_libvirt"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _tls(view):
    tls = view["libvirt"]["tls"]
    files = {k: tls[k] for k in ("cert_file", "key_file", "ca_file")}
    missing = [p for p in files.values() if not os.path.exists(p)]
    return bool(tls["enabled"]), files, missing


def _desired_settings(view):
    """libvirtd.conf keys the model asks for."""
    lv = view["libvirt"]
    tls_on, files, _ = _tls(view)
    settings = {
        "unix_sock_group": lv["unix_sock_group"],
        "unix_sock_ro_perms": lv["unix_sock_ro_perms"],
        "unix_sock_rw_perms": lv["unix_sock_rw_perms"],
        # Socket permissions are the access control; no polkit round trip.
        "auth_unix_ro": "none",
        "auth_unix_rw": "none",
        # Never an unauthenticated TCP listener, even if someone enables the TCP socket.
        "listen_tcp": 0,
        "auth_tcp": "sasl",
        "listen_tls": 1 if tls_on else 0,
    }
    if tls_on:
        settings.update(files)
    # Quoted strings in libvirtd.conf: a quote or newline would end one and start a setting.
    __utils__["kvmcluster_safe.check"]("libvirtd.conf", "libvirt_conf",
                                       {k: v for k, v in settings.items() if isinstance(v, str)})
    return settings


def _qemu_settings(view):
    """qemu.conf keys the model asks for: QEMU takes a live migration's incoming port from
    this range, the range the firewall opens to the peers (migration:ports), and encrypts
    the stream unless migration:plaintext."""
    mig = view["migration"]
    if not mig["enabled"]:
        return {}
    # QEMU's migration stream over TLS with the cluster's certificates (kvmcluster_pki),
    # each side checking the other's; forced, so that no migration goes in clear unless
    # the model says plaintext.
    return {"migration_port_min": mig["ports"][0], "migration_port_max": mig["ports"][1],
            "migrate_tls_x509_cert_dir": __utils__["kvmcluster_pki.layout"]()["dir"],
            "migrate_tls_x509_verify": 1, "migrate_tls_force": 0 if mig["plaintext"] else 1}


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def config_managed(name, path, rw_sockets=(), ro_sockets=(), env_file=None, env=None,
                   qemu_config=None):
    """
    libvirt's daemon config at ``path`` holds the model's settings, and the socket units
    ``rw_sockets``/``ro_sockets`` carry its unix socket group and modes.

    name
        Any; reported back.
    path
        The daemon's config file (libvirtd.conf, or virtproxyd.conf with modular daemons).
    env_file, env
        The daemon's environment file and the variables it must hold (the packaged
        ``--timeout 120`` would stop an idle libvirtd; a hypervisor's daemon stays up).
    qemu_config
        The QEMU driver's config (qemu.conf): its migration port range follows
        ``migration:ports`` (left alone when migration is off).
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = _ret(name)
    try:
        view = __salt__["kvmcluster_model.current"]()
        tls_on, _, missing = _tls(view)
        if tls_on and missing:
            ret.update(result=False, comment="libvirt:tls:enabled is true but these files do "
                       f"not exist: {', '.join(missing)}; TLS stays off until they do")
            return ret
        # Each config file: (path, the keys it must hold, separator); one that has nothing
        # to hold is left alone.
        confs = [(path, _desired_settings(view), " = "), (env_file, env, "="),
                 (qemu_config, _qemu_settings(view) if qemu_config else {}, " = ")]
        confs = [c for c in confs if c[0] and c[1]]
        changes, stale = {}, []
        for conf in confs:
            diff = __salt__["kvmcluster_libvirt.conf_diff"](conf[0], conf[1])
            if diff:
                changes[conf[0]] = diff
                stale.append(conf)
        # libvirtd refuses to start while qemu.conf names a certificate directory that is
        # not there: it is made first (empty; kvmcluster_pki fills it).
        cert_dir = (confs[-1][1].get("migrate_tls_x509_cert_dir")
                    if confs and confs[-1][0] == qemu_config else None)
        if cert_dir and not os.path.isdir(cert_dir):
            changes[cert_dir] = {"old": None, "new": "directory (QEMU's migration "
                                                     "certificates)"}
        lv = view["libvirt"]
        dropins = {}
        for sockets, mode in ((rw_sockets, lv["unix_sock_rw_perms"]),
                              (ro_sockets, lv["unix_sock_ro_perms"])):
            for unit in sockets:
                p = __salt__["kvmcluster_libvirt.dropin_path"](unit)
                text = __salt__["kvmcluster_libvirt.socket_dropin"](lv["unix_sock_group"], mode)
                if __salt__["kvmcluster_node.file_text"](p) != text:
                    dropins[p] = text
                    changes[p] = {"old": "absent" if __salt__["kvmcluster_node.file_text"](p)
                                  is None else "differs", "new": f"SocketGroup="
                                  f"{lv['unix_sock_group']} SocketMode={mode}"}
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc))
        return ret
    if not changes:
        ret["comment"] = f"{path}, {qemu_config or 'qemu.conf (not managed)'} and the " \
            "socket drop-ins are as the model says"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"{len(changes)} file(s) would change")
        return ret
    try:
        if cert_dir in changes:
            base = os.path.dirname(os.path.dirname(cert_dir))
            os.close(__utils__["kvmcluster_files.open_dir"](
                base, os.path.relpath(cert_dir, base), make=True, mode=0o755))
        for conf_path, settings, sep in stale:
            __salt__["kvmcluster_libvirt.conf_write"](conf_path, settings, sep=sep)
        for p, text in dropins.items():
            __salt__["kvmcluster_node.write_file"](p, text)
        if dropins:
            __salt__["kvmcluster_node.systemctl"]("daemon-reload")
        left = {}
        for conf_path, settings, _ in confs:
            left.update(__salt__["kvmcluster_libvirt.conf_diff"](conf_path, settings))
        left_dropins = [p for p, t in dropins.items()
                        if __salt__["kvmcluster_node.file_text"](p) != t]
        if cert_dir in changes and not os.path.isdir(cert_dir):
            left[cert_dir] = "not made"
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc), changes=changes)
        return ret
    if left or left_dropins:
        ret.update(result=False, changes=changes,
                   comment=f"still differs after writing: {left or left_dropins}")
        return ret
    ret.update(changes=changes, comment=f"{len(changes)} file(s) changed")
    return ret


def sockets_managed(name, tcp_socket, tls_socket):
    """
    The libvirt TCP socket unit is disabled and stopped; the TLS socket unit is enabled and
    listening only when the model enables TLS (and its files exist), else disabled and
    stopped. Units that do not exist on this OS are skipped.

    name
        Any; reported back.
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = _ret(name)
    try:
        view = __salt__["kvmcluster_model.current"]()
        tls_on, _, missing = _tls(view)
        want = {tcp_socket: False, tls_socket: tls_on and not missing}
        plan = {}
        for unit, on in want.items():
            if not unit:
                continue
            st = __salt__["kvmcluster_node.unit_state"](unit)
            if not st["exists"]:
                continue
            is_on = st["enabled"] == "enabled"
            if is_on != on or st["active"] != on:
                plan[unit] = {"old": st["label"],
                              "new": "enabled/active" if on else "disabled/inactive"}
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc))
        return ret
    if not plan:
        ret["comment"] = "libvirt TCP socket off" + (", TLS socket on" if want.get(tls_socket)
                                                     else ", TLS socket off")
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=plan, comment=f"{len(plan)} socket unit(s) would change")
        return ret
    try:
        for unit in plan:
            if want[unit]:
                __salt__["kvmcluster_node.systemctl"]("enable", "--now", unit)
            else:
                __salt__["kvmcluster_node.systemctl"]("disable", "--now", unit)
        wrong = [u for u in plan
                 if __salt__["kvmcluster_node.unit_state"](u)["active"] != want[u]]
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc), changes=plan)
        return ret
    ret.update(changes=plan, result=not wrong,
               comment=f"still wrong: {wrong}" if wrong else f"{len(plan)} socket unit(s) set")
    return ret


def _units(service, sockets):
    return [u for u in [*sockets, service] if u]


def running(name, service, sockets=(), started_by_package=False):
    """
    The daemon ``service`` and its ``sockets`` are enabled and active under systemd. An
    enabled daemon whose sockets all listen counts as running: the first client starts it
    (and it starts at boot, for autostarted guests); any libvirt client, a read-only one
    under test=True included, would otherwise change what this state sees.

    name
        Any; reported back.
    service
        The daemon's unit (libvirtd.service); empty with modular daemons.
    sockets
        Its socket units.
    started_by_package
        The OS's packages enable and start their units (Debian/Ubuntu), so under test=True
        a unit still to be installed is predicted to need nothing from this state.
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = _ret(name)
    try:
        if not __salt__["kvmcluster_node.systemd_running"]():
            ret.update(result=False, comment="systemd is not running: cannot manage "
                       f"{service or ', '.join(sockets)}")
            return ret
        plan = {}
        for unit in _units(service, sockets):
            st = __salt__["kvmcluster_node.unit_state"](unit)
            if not st["exists"]:
                if __opts__["test"]:
                    # The packages that bring it are still to be installed in this run.
                    if not started_by_package:
                        plan[unit] = {"old": "absent", "new": "enabled/active"}
                    continue
                ret.update(result=False, comment=f"unit {unit} does not exist (is libvirt "
                           "installed?)")
                return ret
            on_demand = unit == service and not st["active"] and sockets and all(
                __salt__["kvmcluster_node.unit_state"](u)["active"] for u in sockets)
            if st["enabled"] not in ("enabled", "static", "indirect", "alias") or not (
                    st["active"] or on_demand):
                plan[unit] = {"old": st["label"],
                              "new": "enabled/active"}
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc))
        return ret
    if not plan:
        ret["comment"] = f"{', '.join(_units(service, sockets))} enabled and active"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=plan, comment=f"{', '.join(plan)} would be started")
        return ret
    try:
        for unit in plan:
            __salt__["kvmcluster_node.systemctl"]("enable", "--now", unit)
        down = [u for u in plan if not __salt__["kvmcluster_node.unit_state"](u)["active"]]
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc), changes=plan)
        return ret
    ret.update(changes=plan, result=not down,
               comment=f"not active after start: {down}" if down else
               f"{', '.join(plan)} enabled and started")
    return ret


def restarted(name, service, sockets=()):
    """
    Restart the daemon and its sockets once (a socket's group/mode only changes when the
    socket is re-created), then verify they are active. Use it with ``onchanges`` on the
    config state: salt-ssh compiles requisites on the master, where a custom state's
    ``mod_watch`` is unknown and ``watch`` would silently become ``require``.

    name
        Any; reported back.
    service
        The daemon's unit.
    sockets
        Its socket units.
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    ret = _ret(name)
    units = _units(service, sockets)
    if __opts__["test"]:
        ret.update(result=None, changes={"restarted": units},
                   comment=f"{', '.join(units)} would be restarted")
        return ret
    note = ""
    try:
        __salt__["kvmcluster_node.systemctl"]("stop", *reversed(units))
        try:
            __salt__["kvmcluster_node.systemctl"]("start", *units)
        except Exception as exc:  # pylint: disable=broad-except
            # A socket's start can fail once on a transient cgroup error (status 219):
            # one more try, said in the comment; a second failure is the result.
            time.sleep(1)
            __salt__["kvmcluster_node.systemctl"]("start", *units)
            note = f" (the first start failed and was retried: {str(exc)[:200]})"
        down = [u for u in units if not __salt__["kvmcluster_node.unit_state"](u)["active"]]
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=str(exc))
        return ret
    ret.update(changes={"restarted": units}, result=not down,
               comment=f"not active after restart: {down}" if down else
               f"restarted {', '.join(units)}{note}")
    return ret


def _binding_importable():
    """Whether the minion's own Python imports libvirt. Imported here already (the usual
    case on a converged node): yes, without a child. Otherwise a child of the same Python
    decides, which no import cache of this process can mislead after an install."""
    try:
        import libvirt  # pylint: disable=import-outside-toplevel,unused-import  # noqa: F401

        return True
    except ImportError:
        pass
    res = __salt__["cmd.run_all"]([sys.executable, "-c", "import libvirt"], python_shell=False,
                                  ignore_retcode=True, env={"PYTHONPATH": ":".join(sys.path)})
    return res["retcode"] == 0


def _pip_argv():
    """How to pip-install into the minion's own Python, or None where that must not be done."""
    for cand in (os.path.join(sys.prefix, "salt-pip"), "/usr/bin/salt-pip"):
        if os.access(cand, os.X_OK) and "saltstack" in os.path.realpath(sys.executable):
            return [cand, "install"]  # onedir: its extras directory
    if sys.prefix != sys.base_prefix:
        return [sys.executable, "-m", "pip", "install"]  # a virtualenv of its own
    return None  # the system's Python: python3-libvirt from the OS packages is its binding


def _upstream(version):
    """'1:9.0.0-4+deb12u2' -> '9.0.0'."""
    return (version or "").split(":")[-1].split("-")[0].split("+")[0] or None


def python_binding(name, build_pkgs=(), libvirt_pkg="libvirt0"):
    """
    The libvirt Python binding is importable by the Python the minion runs on. Onedir
    minions (and minions in a virtualenv) cannot import the distribution's python3-libvirt:
    there the binding is built with pip, after the OS family's build packages, at the
    version of the node's libvirt unless ``libvirt_python:version`` says otherwise, from
    ``libvirt_python:index_url`` / ``find_links`` when set (offline sites).

    name
        Any; reported back.
    build_pkgs
        map.jinja ``pkgs:libvirt_python_build``.
    libvirt_pkg
        The package of the libvirt library, whose version the binding follows.
    """
    gated = _skeleton().not_a_hypervisor(name, __salt__["kvmcluster_model.current"]())
    if gated:
        return gated
    st = _skeleton().converge
    test = __opts__["test"]
    if _binding_importable():
        return _skeleton().ret(
            name, comment=f"libvirt binding importable by {sys.executable}")
    pip = _pip_argv()
    if pip is None:
        if test:
            # Nothing for this state to do: the KVM packages bring python3-libvirt.
            return _skeleton().ret(name, True, f"{sys.executable} is the system's Python: "
                                   "python3-libvirt, with the KVM packages, is its binding")
        return _skeleton().ret(
            name, False,
            f"{sys.executable} is the system's Python and cannot import libvirt: install "
            f"the OS package python3-libvirt (kvmcluster installs it with the KVM packages)")
    cfg = __salt__["kvmcluster_model.current"]()["libvirt_python"]

    def version():
        if cfg.get("version"):
            return str(cfg["version"])
        have = __salt__["pkg.version"](libvirt_pkg)
        if not have and test:
            have = __salt__["pkg.latest_version"](libvirt_pkg, refresh=True)
        found = _upstream(have)
        if not found:
            raise _skeleton().Refused(
                f"cannot tell the version of {libvirt_pkg}; set libvirt_python:version")
        return found

    def diff():
        changes = {}
        pkgs = _skeleton().packages_diff(__salt__, list(build_pkgs), test)
        if pkgs:
            changes["packages"] = pkgs
        changes["libvirt-python"] = {"old": None, "new": version()}
        return changes

    def apply(changes):
        if "packages" in changes:
            _skeleton().packages_install(__salt__, changes["packages"])
        argv = pip + ["--no-cache-dir", f"libvirt-python=={changes['libvirt-python']['new']}"]
        if cfg.get("index_url"):
            argv += ["--index-url", cfg["index_url"]]
        if cfg.get("find_links"):
            argv += ["--find-links", cfg["find_links"]]
            if not cfg.get("index_url"):
                argv.append("--no-index")
        # An http:// URL in pillar is the operator's choice of a plain-HTTP repository
        # (an offline site's mirror): pip ignores such a host unless told it is trusted.
        for url in (cfg.get("index_url"), cfg.get("find_links")):
            if url and url.startswith("http://"):
                argv += ["--trusted-host", url.split("/")[2].split(":")[0]]
        res = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True,
                                      timeout=1800)
        if res["retcode"] != 0:
            raise _skeleton().Refused(
                f"{' '.join(argv)} failed: {(res['stderr'] or res['stdout'])[-1500:]}")
        importlib.invalidate_caches()

    def verify():
        return [] if _binding_importable() else [f"{sys.executable} still cannot import libvirt"]

    return st(name, test, diff, apply, verify, planned=lambda c: (
        f"libvirt-python {c['libvirt-python']['new']} would be built into {sys.executable}'s "
        "environment"), done=lambda c: (
        f"libvirt-python {c['libvirt-python']['new']} built into {sys.executable}'s "
        "environment"))
