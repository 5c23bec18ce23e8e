"""
The cluster's certificate authority and the nodes' migration certificates: pure code.

QEMU encrypts a live migration's stream (memory, and the disks a migration copies) with
TLS when libvirt is asked to (``VIR_MIGRATE_TLS``): the source's QEMU is the client, the
target's the server, each with a certificate of the cluster's CA, and each checks the
other's. The CA's key stays where ``salt-run`` runs (the management node); a node's key is
made on the node and never leaves it: the node sends a signing request, the runner signs
it with the names and addresses the model gives that node (never the ones the request
asks for).

Certificates and keys are built with Salt's own x509 library (``salt.utils.x509``, the one
under ``x509_v2``); checks use ``cryptography`` as Debian 12 ships it (38).
"""
import datetime
import hashlib
import ipaddress

# Where libvirt's QEMU driver reads migration certificates (qemu.conf's
# migrate_tls_x509_cert_dir); the distributions' MAC policies (AppArmor's libvirt-qemu
# abstraction, SELinux's cert_t) already let QEMU read it.
QEMU_DIR = "/etc/pki/qemu"
CA_FILE = "ca-cert.pem"
CERT_FILES = ("server-cert.pem", "client-cert.pem")
KEY_FILES = ("server-key.pem", "client-key.pem")
CA_KEY = "ca-key.pem"
CA_CERT = "ca-cert.pem"
CA_DAYS = 3650


def layout():
    """Where a node's files go: ``{"dir", "ca", "certs", "keys"}``."""
    return {"dir": QEMU_DIR, "ca": CA_FILE, "certs": CERT_FILES, "keys": KEY_FILES}


def _x509():
    import salt.utils.x509  # pylint: disable=import-outside-toplevel

    return salt.utils.x509


def _crypto():
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return x509, hashes, serialization, ec


def _load_key(pem):
    _, _, serialization, _ = _crypto()
    return serialization.load_pem_private_key(pem if isinstance(pem, bytes) else pem.encode(),
                                              password=None)


def _pem_key(key):
    _, _, serialization, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_key():
    """A new private key (EC P-256), PEM bytes."""
    _, _, _, ec = _crypto()
    return _pem_key(ec.generate_private_key(ec.SECP256R1()))


def request(key_pem, node):
    """A signing request for ``key_pem`` with CN ``node``, PEM bytes: proof that the node
    holds the key; the names the certificate carries are the runner's."""
    x509, hashes, serialization, _ = _crypto()
    key = _load_key(key_pem)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, node)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def new_ca(name, days=CA_DAYS):
    """A new CA for cluster ``name``: ``(key_pem, cert_pem)``."""
    _, hashes, serialization, _ = _crypto()
    key_pem = new_key()
    builder, key, *_ = _x509().build_crt(
        key_pem, subject={"CN": f"kvmcluster CA {name}"[:64], "O": "kvmcluster"},
        days_valid=days, basicConstraints="critical, CA:true, pathlen:0",
        keyUsage="critical, cRLSign, keyCertSign", subjectKeyIdentifier="hash")
    cert = builder.sign(key, hashes.SHA256())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def issue(ca_key_pem, ca_cert_pem, csr_pem, node, dns, ips, hours):
    """A certificate for ``node`` from the CA, valid ``hours`` from now, for the key of
    ``csr_pem`` (whose signature must hold), with exactly ``dns`` names and ``ips``
    addresses, usable by QEMU as TLS server and client. PEM bytes."""
    x509, hashes, serialization, _ = _crypto()
    csr = x509.load_pem_x509_csr(csr_pem if isinstance(csr_pem, bytes) else csr_pem.encode())
    if not csr.is_signature_valid:
        raise ValueError(f"{node}: the signing request's signature does not hold")
    sans = [f"DNS:{d}" for d in dns] + [f"IP:{ipaddress.ip_address(i)}" for i in ips]
    now = datetime.datetime.now(datetime.timezone.utc)
    after = now + datetime.timedelta(hours=hours)
    fmt = _x509().TIME_FMT
    builder, ca_key, *_ = _x509().build_crt(
        ca_key_pem, signing_cert=ca_cert_pem, public_key=csr.public_key(),
        subject={"CN": node}, not_before=(now - datetime.timedelta(minutes=5)).strftime(fmt),
        not_after=after.strftime(fmt), basicConstraints="critical, CA:false",
        keyUsage="critical, digitalSignature, keyEncipherment",
        extendedKeyUsage="serverAuth, clientAuth", subjectAltName=", ".join(sans),
        subjectKeyIdentifier="hash", authorityKeyIdentifier="keyid:always")
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_cert(pem):
    x509, _, _, _ = _crypto()
    return x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())


def _after(cert):
    when = getattr(cert, "not_valid_after_utc", None)
    if when is None:  # cryptography < 42
        when = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return when


def signed_by(cert_pem, ca_pem):
    """Whether ``cert_pem`` carries a valid signature of the CA ``ca_pem`` (and names it
    as its issuer)."""
    _, _, _, ec = _crypto()
    cert, ca = _load_cert(cert_pem), _load_cert(ca_pem)
    if cert.issuer != ca.subject:
        return False
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def same_key(cert_pem, key_pem):
    """Whether the certificate is for this private key."""
    _, _, serialization, _ = _crypto()
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    pub = _load_key(key_pem).public_key().public_bytes(enc, raw)
    return _load_cert(cert_pem).public_key().public_bytes(enc, raw) == pub


def fingerprint(pem):
    """A certificate's SHA-256 fingerprint, hex."""
    _, _, serialization, _ = _crypto()
    return hashlib.sha256(_load_cert(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def describe(cert_pem, ca_pem=None):
    """What a certificate says: ``{subject, dns, ips, not_after, serial, fingerprint,
    ca_fingerprint, signed_by_ca}`` (``signed_by_ca`` only with ``ca_pem``)."""
    x509, _, _, _ = _crypto()
    cert = _load_cert(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = sorted(san.get_values_for_type(x509.DNSName))
        ips = sorted(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = [], []
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    out = {"subject": cns[0].value if cns else "", "dns": dns, "ips": ips,
           "not_after": _after(cert).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "serial": f"{cert.serial_number:x}", "fingerprint": fingerprint(cert_pem)}
    if ca_pem is not None:
        out["ca_fingerprint"] = fingerprint(ca_pem)
        out["signed_by_ca"] = signed_by(cert_pem, ca_pem)
    return out


def seconds_left(desc, now=None):
    """Seconds until the described certificate expires (negative: expired)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    after = datetime.datetime.strptime(desc["not_after"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    return (after - now).total_seconds()


def renewal(desc, ca_fingerprint, dns, ips, renew_hours, now=None):
    """Why a node's certificate (``desc``, from ``describe`` with the CA; None: there is
    none) must be issued again, or None when it is good: from another CA or not signed
    by it, not for the node's key, names or addresses that are not the model's, or fewer
    than ``renew_hours`` left."""
    if desc is None:
        return "no certificate yet"
    if desc.get("ca_fingerprint") != ca_fingerprint or not desc.get("signed_by_ca"):
        return "not issued by the cluster's CA"
    if desc.get("key_matches") is False:
        return "not for the node's key"
    if sorted(desc["dns"]) != sorted(dns) or sorted(desc["ips"]) != sorted(
            str(ipaddress.ip_address(i)) for i in ips):
        return (f"names {desc['dns'] + desc['ips']} are not the model's "
                f"{sorted(dns) + sorted(ips)}")
    left = seconds_left(desc, now)
    if left <= renew_hours * 3600:
        return (f"expires {desc['not_after']}, within renew_hours ({renew_hours} h)"
                if left > 0 else f"expired {desc['not_after']}")
    return None
