"""
A node's half of the cluster's migration PKI (``_utils/kvmcluster_pki.py`` holds the
certificate code): the node's key, made here and never sent anywhere, a signing request
for it, the certificate and CA the runner issued, and what they say.

The files sit where libvirt's QEMU driver reads them (qemu.conf's
``migrate_tls_x509_cert_dir``): ``ca-cert.pem``, ``server-cert.pem`` and
``client-cert.pem`` (the same certificate: a node's QEMU is the server when a VM comes
in and the client when one leaves), ``server-key.pem`` and ``client-key.pem`` (root and
QEMU's group may read them). Written without following a link, replaced by rename.
"""
import grp
import os
import re

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_pki"

QEMU_CONF = "/etc/libvirt/qemu.conf"
# The distributions' own groups for QEMU (Debian/Ubuntu, EL) when qemu.conf sets none.
QEMU_GROUPS = ("libvirt-qemu", "qemu")


def __virtual__():
    return __virtualname__


def _u(name):
    return __utils__[f"kvmcluster_pki.{name}"]


def _f(name):
    return __utils__[f"kvmcluster_files.{name}"]


def _qemu_gid(conf=QEMU_CONF):
    """The group QEMU runs as: qemu.conf's ``group``, else the distribution's."""
    names = list(QEMU_GROUPS)
    try:
        with open(conf, encoding="utf-8") as fh:
            for line in fh:
                m = re.match(r'\s*group\s*=\s*"([^"]+)"\s*$', line)
                if m:
                    names = [m.group(1)]
    except OSError:
        pass
    for name in names:
        if name.startswith("+") and name[1:].isdigit():
            return int(name[1:])
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    raise CommandExecutionError(f"none of the groups {', '.join(names)} exists on "
                                f"{__grains__['id']}: is libvirt's QEMU driver installed?")


def _where():
    return _u("layout")()["dir"]


def _dir(make=False):
    # /etc is root's; pki/qemu below it is walked without following a link.
    base = os.path.dirname(os.path.dirname(_where()))
    return _f("open_dir")(base, os.path.relpath(_where(), base), make=make, mode=0o755)


def _key(fd, make):
    """The node's key (PEM) and whether it was made now. Both key files hold it."""
    names = _u("layout")()["keys"]
    kinds = {n: _f("kind")(fd, n) for n in names}
    odd = [n for n, k in kinds.items() if k not in ("file", "absent")]
    if odd:
        raise CommandExecutionError(f"{os.path.join(_where(), odd[0])} on "
                                    f"{__grains__['id']} is a {kinds[odd[0]]}, not a key file; "
                                    "remove it (nothing was written)")
    have = [n for n, k in kinds.items() if k == "file"]
    if not have:
        if not make:
            return None, False
        key = _u("new_key")()
        gid = _qemu_gid()
        for n in names:
            _f("create")(fd, n, key, 0o640, (0, gid))
        return key, True
    key = _f("read")(fd, have[0])
    for n in names:
        if n not in have or _f("read")(fd, n) != key:
            _f("replace")(fd, n, key, 0o640, (0, _qemu_gid()))
    return key, False


def _current(fd, key):
    names = _u("layout")()
    cert = _f("read")(fd, names["certs"][0])
    if cert is None:
        return None
    ca = _f("read")(fd, names["ca"])
    try:
        desc = _u("describe")(cert, ca)
    except ValueError as exc:
        return {"error": f"server-cert.pem does not parse: {exc}"}
    desc["key_matches"] = bool(key) and _u("same_key")(cert, key)
    desc["client_cert_same"] = _f("read")(fd, names["certs"][1]) == cert
    return desc


def _model(parameters, cluster):
    """What the model says this node's certificate carries, and the settings for it."""
    import json  # pylint: disable=import-outside-toplevel

    view = None
    if parameters is None and cluster is None:
        try:
            view = __salt__["kvmcluster_model.current"]()
        except CommandExecutionError:
            pass  # no state run loaded it: from this node's pillar
    if view is None:
        view = __salt__["kvmcluster_model.load"](
            json.loads(parameters) if isinstance(parameters, str) else parameters,
            cluster=json.loads(cluster) if isinstance(cluster, str) else cluster)
    me = view["self"]
    dns = sorted({me["name"], me.get("hostname") or me["name"], me.get("fqdn") or me["name"]})
    # QEMU checks the name it connected to: the migration network's address included.
    ips = [str(a).split("/", maxsplit=1)[0]
           for a in (me.get("ip"), me.get("ip6"), me.get("migration_ip")) if a]
    mig = view["migration"]
    return {"dns": dns, "ips": ips, "domain": view.get("domain") or "",
            "hypervisor": bool(me.get("hypervisor", True)),
            "plaintext": bool(mig["plaintext"]),
            "valid_hours": mig["certificates"]["valid_hours"],
            "renew_hours": mig["certificates"]["renew_hours"]}


def request(parameters=None, cluster=None):
    """
    A signing request for this node's migration key, made (readable by root and QEMU's
    group) when there is none; the key itself never leaves the node. Returns
    ``{"node", "csr", "key_made", "certificate", "model"}``: what the installed
    certificate says (or None), and the names, addresses and validity the model gives
    this node's certificate. ``parameters`` and ``cluster`` as the runner sends them.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_pki.request
    """
    me = __grains__["id"]
    model = _model(parameters, cluster)
    if not model["hypervisor"]:
        # A management-only node runs no QEMU: no key, no certificate.
        return {"node": me, "model": model}
    try:
        fd = _dir(make=True)
        try:
            key, made = _key(fd, make=True)
            return {"node": me, "csr": _u("request")(key, me).decode(), "key_made": made,
                    "certificate": _current(fd, key), "model": model}
        finally:
            os.close(fd)
    except OSError as exc:
        raise CommandExecutionError(f"{me}: {_where()}: {exc}") from exc


def _pem(value):
    """PEM text, given as such or base64 of it (how the runner sends it: one word)."""
    text = str(value).strip()
    if not text.startswith("-----BEGIN"):
        import base64  # pylint: disable=import-outside-toplevel
        import binascii  # pylint: disable=import-outside-toplevel

        try:
            text = base64.b64decode(text, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CommandExecutionError("not a PEM certificate (nor base64 of one)") from exc
    return (text.strip() + "\n").encode()


def install(cert, ca):
    """
    Install ``cert`` (this node's certificate, PEM or base64 of it) and ``ca`` (the cluster
    CA's certificate, the same) for QEMU's migration TLS, after checking that ``cert`` is for this node's
    key and signed by ``ca``. Returns what the installed certificate says.

    CLI Example:

    .. code-block:: bash

        salt kvm01 kvmcluster_pki.install "$(cat kvm01.pem)" "$(cat ca.pem)"
    """
    me = __grains__["id"]
    cert, ca = _pem(cert), _pem(ca)
    try:
        fd = _dir()
        try:
            key, _ = _key(fd, make=False)
            if key is None:
                raise CommandExecutionError(f"{me} has no migration key yet: "
                                            "kvmcluster_pki.request makes it")
            try:
                if not _u("same_key")(cert, key):
                    raise CommandExecutionError(f"the certificate is not for {me}'s key; "
                                                "nothing installed")
                if not _u("signed_by")(cert, ca):
                    raise CommandExecutionError("the certificate is not signed by the CA "
                                                "given; nothing installed")
            except ValueError as exc:
                raise CommandExecutionError(f"not a certificate: {exc}") from exc
            names = _u("layout")()
            _f("replace")(fd, names["ca"], ca, 0o644)
            for n in names["certs"]:
                _f("replace")(fd, n, cert, 0o644)
            return _current(fd, key)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CommandExecutionError(f"{me}: {_where()}: {exc}") from exc


def info():
    """
    What this node's migration certificate says (names, addresses, expiry, the CA's
    fingerprint, whether it is signed by that CA and for the node's key), or None.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_pki.info
    """
    try:
        fd = _dir()
    except FileNotFoundError:
        return None
    try:
        key, _ = _key(fd, make=False)
        return _current(fd, key)
    finally:
        os.close(fd)
