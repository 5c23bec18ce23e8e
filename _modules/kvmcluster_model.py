"""
The kvmcluster cluster model: pillar ``kvmcluster`` merged over the formula's defaults and
validated as a whole, for every node at once.

Every state of the formula reads the cluster from here; no SLS reads raw pillar its own way.
The core (:func:`build`) is pure Python: it takes the pillar data and the defaults and returns
the model and the list of errors. Each error names the node (or ``cluster``), the pillar key
and the reason.
"""
import base64
import binascii
import copy
import difflib
import hashlib
import ipaddress
import logging
import posixpath
import re

try:
    from salt.exceptions import CommandExecutionError
except ImportError:  # the pure core is importable without Salt

    class CommandExecutionError(Exception):
        pass


log = logging.getLogger(__name__)

__virtualname__ = "kvmcluster_model"

CONTEXT_KEY = "kvmcluster_model.model"
ROOT = "kvmcluster"

BOND_MODES = {
    "balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3,
    "802.3ad": 4, "balance-tlb": 5, "balance-alb": 6,
}
XMIT_HASH_POLICIES = ["layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4", "vlan+srcmac"]
HASHING_MODES = {"balance-xor", "802.3ad", "balance-tlb"}
BACKENDS = {
    "ifupdown": {"Debian"},
    "netplan": {"Debian"},
    "networkmanager": {"Debian", "RedHat"},
    "ifcfg": {"RedHat"},
}
ROLES = {"management", "nfs_server", "hypervisor"}
_LEASE_TIME = re.compile(r"^(infinite|\d{1,7}[smhdw]?)\Z", re.A)
MTU_MIN, MTU_MAX = 576, 9216
POOL_TYPES = {"netfs", "dir"}
SHARE_TYPES = {"nfs", "external"}
STRICTNESS = {"fail", "warn"}

# Keys each mapping may hold (the defaults hold the rest of the schema).
NODE_KEYS = {
    "ip", "hostname", "gateway", "dns_servers", "dns_search", "nic", "mac", "mtu", "bond",
    "bridge", "backend", "roles", "os_family", "ip6", "gateway6", "ssh_host_keys",
    "migration_ip", "storage_ip",
}
MIGRATION_TRANSPORTS = {"ssh", "tls"}
# Networks apart from the guests' (networks:<side>, nodes:<id>:<side>_ip): what each carries.
SIDE_NETWORKS = {"migration": "live migration's stream", "storage": "the NFS share"}
_PRIVATE_KEY = re.compile(r"^-----BEGIN OPENSSH PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+"
                          r"-----END OPENSSH PRIVATE KEY-----\n?\Z", re.A)
CONFIRM_MODES = {"auto", "manual"}
GATEWAY_CHECKS = {"arp", "icmp", "none"}
NODE_BOND_KEYS = {"name", "slaves", "mode", "miimon", "updelay", "downdelay",
                  "xmit_hash_policy", "lacp_rate", "mtu"}
NODE_BRIDGE_KEYS = {"name", "mtu", "stp", "forward_delay"}

_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z", re.A)
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\Z", re.A)
_MAC = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\Z", re.A)
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z", re.A)
# Debian and RPM package names (no version, no option: it reaches apt/dnf as one argv item).
_PKG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]{0,127}\Z", re.A)
_SYSCTL = re.compile(r"^[A-Za-z0-9_]+([./][A-Za-z0-9_-]+)+\Z", re.A)
# A sysctl value: words and numbers, never a newline, comment or shell metacharacter.
_SYSCTL_VALUE = re.compile(r"^[A-Za-z0-9_.:/,+@= -]{0,256}\Z", re.A)
# Public key types OpenSSH knows; a key is parsed, not matched (see _ssh_key).
SSH_KEY_TYPES = {
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
}
# One path segment: the characters every writer (exports, fstab, AppArmor, fcontext,
# libvirtd.conf, unit files) takes as they are, without quoting or escaping.
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._+@-]{1,255}\Z", re.A)
PATH_MAX = 1024
# Pillar keys whose values are secrets: never sent to a node as an argument, never in a
# message, a state's changes or a log line. Paths under ROOT. The runner replaces them with
# WITHHELD (_utils/kvmcluster_safe.py holds the same two: a test keeps them equal).
SECRETS = (("migration", "ssh", "private_key"),)
WITHHELD = "withheld (a secret stays on the management node)"
# Smallest cluster subnets that make sense (a wider one is a typo or a grant to the world).
SUBNET_MIN_PREFIX = {4: 8, 6: 16}
# Pool, volume, image and network names: also file names in a pool's directory, so never
# "." or "..".
_POOL_NAME = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9_.+-]{1,64}\Z", re.A)


def __virtual__():
    return __virtualname__


class ModelError:
    """One reason the pillar is not a cluster."""

    __slots__ = ("node", "key", "reason")

    def __init__(self, node, key, reason):
        self.node, self.key, self.reason = node, key, reason

    def __str__(self):
        return f"[{self.node}] {self.key}: {self.reason}"

    def __repr__(self):
        return f"ModelError({self})"


def _printable(text):
    """``text`` on one line: a hostile key or id shows its escapes, never a line break."""
    text = str(text)
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


class _Errors(list):
    def add(self, node, key, reason):
        err = ModelError(_printable(node or "cluster"), _printable(key), reason)
        # Checks may overlap (the schema's switch check and a section's own, the bridge
        # checked for the cluster and for each node): one reason is said once.
        if not any(str(e) == str(err) for e in self):
            self.append(err)


# ---- small helpers ------------------------------------------------------------------

def merge(base, over):
    """Deep merge of mappings; lists and scalars in `over` replace those in `base`."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# Words operators reach for, mapped to the key the schema uses for them.
ALIASES = {"address": "ip", "ipaddr": "ip", "ip_address": "ip", "dns": "dns_servers",
           "nameservers": "dns_servers", "subnet": "subnets", "interface": "nic",
           "slave": "slaves", "mode": "mode"}


def _suggest(key, valid):
    valid = {str(v) for v in valid}
    words = valid | {a for a, target in ALIASES.items() if target in valid}
    close = difflib.get_close_matches(str(key), sorted(words), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean '{ALIASES.get(close[0], close[0]) if close[0] not in valid else close[0]}'?)"


def _unknown(errors, node, path, data, valid):
    if not isinstance(data, dict):
        return
    for k in data:
        if k not in valid:
            errors.add(node, f"{path}:{k}",
                       f"unknown key{_suggest(k, valid)}; valid keys: {', '.join(sorted(valid))}")


def _path_ok(errors, node, key, value):
    if not isinstance(value, str) or not value:
        errors.add(node, key, f"must be an absolute path, got {_q(value)}")
        return False
    if not value.startswith("/"):
        errors.add(node, key, f"{_q(value)} is not an absolute path")
        return False
    norm = posixpath.normpath(value)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm != value:
        errors.add(node, key, f"{_q(value)} is not normalized (write {_q(norm)})")
        return False
    if value == "/":
        errors.add(node, key, "must not be the root directory")
        return False
    bad = [seg for seg in value.split("/")[1:] if not _PATH_SEGMENT.match(seg)]
    if bad or len(value) > PATH_MAX:
        errors.add(node, key, f"{_q(value)} may hold only letters, digits and ._+@- between "
                   f"slashes (at most {PATH_MAX} characters): it is written into config files "
                   "and rules as it is")
        return False
    return True


def _nested(a, b):
    """True if one path equals or lies inside the other."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _int(errors, node, key, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(node, key, f"must be an integer, got {_q(value)}")
        return None
    if not lo <= value <= hi:
        errors.add(node, key, f"{value} is out of range {lo}..{hi}")
        return None
    return value


def _bool(errors, node, key, value):
    if not isinstance(value, bool):
        errors.add(node, key, f"must be true or false, got {_q(value)}")


def _canonical(value, parse):
    """``parse(value)`` for a plain address text only: a string of ASCII address characters
    (Python's ipaddress also takes IPv6 scope ids, ``fd00::1%<anything>``, newlines
    included, and integers). Raises ValueError."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return parse(str(value))
    if not isinstance(value, str) or not re.match(r"^[0-9A-Fa-f.:/]{2,64}\Z", value, re.A):
        raise ValueError(value)
    return parse(value)


def _addr(errors, node, key, value):
    """The address, or None with an error; canonical (``str()`` of the result is how the
    model stores it)."""
    try:
        return _canonical(value, ipaddress.ip_address)
    except ValueError:
        why = " (a scope id is not allowed)" if isinstance(value, str) and "%" in value else ""
        errors.add(node, key, f"{_q(value)} is not an IP address{why}")
        return None


def _network(errors, node, key, value):
    """A network (host bits allowed, as exports and firewalls take them), canonical; None
    with an error otherwise."""
    try:
        return _canonical(value, lambda v: ipaddress.ip_network(v, strict=False))
    except ValueError:
        errors.add(node, key, f"{_q(value)} is not an address or network")
        return None


def _ssh_key(value):
    """A public key line canonical (``type body comment``), or None: a known type, a body
    that decodes to a key of that type, a comment of printable ASCII. Surrounding spaces
    and newlines (a YAML block) are dropped; nothing else is."""
    if not isinstance(value, str):
        return None
    text = value.strip(" \t\n")
    if not re.match(r"^[\x20-\x7e]{1,16384}\Z", text, re.A):
        return None  # control characters, U+2028, NEL, VT ...: a second line in disguise
    words = text.split(" ")
    ktype, body, comment = words[0], (words[1] if len(words) > 1 else ""), words[2:]
    if ktype not in SSH_KEY_TYPES or not re.match(r"^[A-Za-z0-9+/]+={0,2}\Z", body, re.A):
        return None
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4:4 + n] != ktype.encode() or len(blob) <= 4 + n:
        return None
    return " ".join([ktype, body, *[w for w in comment if w]])


def _cut(text, limit=80):
    """``text`` as it is, cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _q(value, limit=80):
    """``repr(value)`` cut to ``limit`` characters: a message never repeats a huge value."""
    try:
        text = repr(value)
    except Exception:  # pylint: disable=broad-except
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_of(value, choices):
    """``value in choices`` for any value (a list or mapping is simply not a choice)."""
    return isinstance(value, str) and value in choices


def _domain(errors, node, key, value):
    if not (isinstance(value, str) and value and len(value) <= 253
            and all(_HOSTNAME.match(p) for p in value.split("."))):
        errors.add(node, key, f"{_q(value)} is not a DNS domain (ASCII letters, digits, "
                   "hyphens and dots)")
        return False
    return True


def _raise():
    raise ValueError


def _list(errors, node, key, value):
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(node, key, f"must be a list, got {type(value).__name__} {_q(value)}")
        return []
    return value


# ---- the model ----------------------------------------------------------------------

def build(pillar, defaults, self_id=None, self_os_family=None):
    """Build and validate the cluster model.

    pillar: the mapping under pillar key ``kvmcluster``.
    defaults: the formula's ``cluster`` defaults (parameters/defaults.yaml).
    self_id / self_os_family: the node doing the building, for checks only it can make.

    Returns (model, errors); ``model`` is None when there are errors.
    """
    errors = _Errors()
    try:
        model, errors = _build(errors, pillar, defaults, self_id, self_os_family)
    except Exception as exc:  # pylint: disable=broad-except
        # Validation reports, it never raises; an exception here is a bug, named as one.
        log.error("kvmcluster model validation failed: %s", type(exc).__name__)
        errors.add(None, ROOT, f"{INTERNAL}: {type(exc).__name__}: {_q(str(exc))}")
        model = None
    return model, _without_secrets(errors, pillar)


def _secret_words(pillar):
    """The words (8 characters or more) of the secrets in ``pillar``: the values at the
    secret keys, and any string that holds a private key, wherever it was put."""
    texts = []
    for path in SECRETS:
        cur = pillar
        for k in path:
            cur = cur.get(k) if isinstance(cur, dict) else cur
            if not isinstance(cur, dict):
                break
        if cur is not None and cur != WITHHELD and not isinstance(cur, dict):
            texts.append(cur if isinstance(cur, str) else repr(cur))

    def walk(node, level):
        if level > 12:
            return
        if isinstance(node, dict):
            for v in node.values():
                walk(v, level + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, level + 1)
        elif isinstance(node, str) and "PRIVATE KEY" in node:
            texts.append(node)

    walk(pillar, 0)
    return {w for t in texts for w in re.split(r"[\s'\"\\]+|\\n", t) if len(w) >= 8}


def _without_secrets(errors, pillar):
    """A message never quotes a secret, whatever check quoted a value (a secret put where a
    mapping belongs, say): such a reason is replaced."""
    words = _secret_words(pillar)
    if not words:
        return errors
    for e in errors:
        if any(w in e.reason for w in words):
            e.reason = "holds a secret (migration:ssh:private_key) where it does not belong; " \
                       "the value is not shown"
    return errors


INTERNAL = "cannot be validated (a bug in kvmcluster; please report it)"
# Mappings whose keys are the operator's own (no unknown-key check below them).
OPEN_MAPS = {"nodes", "sysctl", "records", "hosts", "images", "vms"}


def _shape(errors, path, data, default):
    """Every key known, every mapping where the defaults hold one; False on a wrong shape."""
    ok = True
    if not isinstance(data, dict):
        return ok
    for k, v in data.items():
        if k not in default:
            errors.add(None, f"{path}:{k}", f"unknown key{_suggest(k, default)}; valid keys: "
                       + ", ".join(sorted(map(str, default))))
            continue
        if isinstance(default[k], dict):
            if not isinstance(v, dict):
                errors.add(None, f"{path}:{k}", f"must be a mapping, got {type(v).__name__} "
                           f"{_q(v)}")
                ok = False
            elif k not in OPEN_MAPS:
                ok = _shape(errors, f"{path}:{k}", v, default[k]) and ok
    return ok


def _build(errors, pillar, defaults, self_id, self_os_family):
    if pillar is None:
        pillar = {}
    if not isinstance(pillar, dict):
        errors.add(None, ROOT, f"must be a mapping, got {type(pillar).__name__}")
        return None, errors
    _check_lookup(errors, pillar.get("lookup"))
    pillar = {k: v for k, v in pillar.items() if k != "lookup"}
    if not _shape(errors, ROOT, pillar, {**defaults, "lookup": {}}):
        return None, errors

    c = merge(defaults, pillar)
    _check_booleans(errors, ROOT, c, defaults)
    subnets = _check_cluster(errors, c)
    nodes = _node_ids(errors, c.get("nodes"))
    if not isinstance(nodes, dict) or not nodes:
        if not errors:
            errors.add(None, f"{ROOT}:nodes", "must be a mapping of node id to node settings, "
                       "with at least one node")
        return None, errors
    c["nodes"] = nodes
    resolved = {}
    for name, entry in nodes.items():
        resolved[name] = _check_node(errors, c, subnets, name, entry, self_id, self_os_family)
    _check_across(errors, c, resolved)
    _check_migration(errors, c, resolved)
    nets = _side_networks(errors, c, subnets)
    _check_storage(errors, c, resolved, subnets, nets["storage"])
    seen = _check_dns_dhcp(errors, c, resolved, subnets)
    images, vms = _check_vms(errors, c, resolved, subnets, seen)
    _check_clients_guests(errors, c, vms, seen)
    _check_networks(errors, c, resolved, nets, vms, seen)
    if errors:
        return None, errors
    model = {k: v for k, v in c.items() if k not in ("nodes", "images", "vms")}
    model["subnets"] = [str(s) for s in subnets]
    model["nodes"] = resolved
    model["images"], model["vms"] = images, vms
    return model, errors


def _node_ids(errors, nodes):
    """The nodes keyed by their id as text: YAML makes ``101:`` an integer, a minion id is a
    string. Any other key type, or two keys that read the same, is an error."""
    if not isinstance(nodes, dict):
        return nodes
    out = {}
    for name, entry in nodes.items():
        if isinstance(name, bool) or not isinstance(name, (str, int)):
            errors.add(None, f"{ROOT}:nodes:{_q(name)}", "a node id is its minion id: a "
                       f"string, got {type(name).__name__}")
            continue
        if str(name) in out:
            errors.add(str(name), f"{ROOT}:nodes:{name}", "this node id is given twice")
            continue
        out[str(name)] = entry
    return out


def _check_booleans(errors, path, data, default):
    """Every key whose default is true or false takes exactly true or false: a string
    'false' or 'no' is truthy in code, and must never turn a switch on. The one check of
    the cluster's switches (per-node and per-VM ones are checked with their entries)."""
    if not isinstance(data, dict) or not isinstance(default, dict):
        return
    for k, d in default.items():
        if k in OPEN_MAPS or k not in data:
            continue
        if isinstance(d, bool):
            _bool(errors, None, f"{path}:{k}", data[k])
        elif isinstance(d, dict):
            _check_booleans(errors, f"{path}:{k}", data[k], d)


# Formula parameters a site may override (``kvmcluster:lookup``) are package, unit and
# file names that reach argv and config files: words and paths, never options or lines.
_LOOKUP_VALUE = re.compile(r"^(/?[A-Za-z0-9_@+.:=][A-Za-z0-9_@+.:=/-]{0,255})?\Z", re.A)


def _check_lookup(errors, lookup, path=f"{ROOT}:lookup", depth=0):
    if lookup is None:
        return
    if depth == 0 and not isinstance(lookup, dict):
        errors.add(None, path, f"must be a mapping of formula parameters, got {_q(lookup)}")
        return
    if depth > 6:
        errors.add(None, path, "is nested too deeply")
        return
    if isinstance(lookup, dict):
        for k, v in lookup.items():
            if not (isinstance(k, str) and re.match(r"^[A-Za-z0-9_]{1,64}\Z", k, re.A)):
                errors.add(None, f"{path}:{_q(k)}", "is not a parameter name")
                continue
            _check_lookup(errors, v, f"{path}:{k}", depth + 1)
    elif isinstance(lookup, list):
        for i, v in enumerate(lookup):
            _check_lookup(errors, v, f"{path}:{i}", depth + 1)
    elif isinstance(lookup, str):
        if not _LOOKUP_VALUE.match(lookup) or "/../" in lookup + "/" or "//" in lookup:
            errors.add(None, path, f"{_q(lookup)} is not a package, unit or file name "
                       "(letters, digits, _@+.:=-/, not starting with -)")
    elif not isinstance(lookup, (bool, int, float)):
        errors.add(None, path, f"must be a mapping of formula parameters, got {_q(lookup)}")


def _check_cluster(errors, c):
    subnets = []
    for i, s in enumerate(_list(errors, None, f"{ROOT}:subnets", c.get("subnets"))):
        try:
            net = _canonical(s, lambda v: ipaddress.ip_network(v, strict=True))
        except ValueError as exc:
            errors.add(None, f"{ROOT}:subnets:{i}", f"{_q(s)} is not a network ({_q(str(exc), 120)})")
            continue
        if net.prefixlen < SUBNET_MIN_PREFIX[net.version]:
            errors.add(None, f"{ROOT}:subnets:{i}", f"{net} is wider than a cluster subnet can "
                       f"be (prefix at least /{SUBNET_MIN_PREFIX[net.version]})")
            continue
        subnets.append(net)
    if not subnets and not errors:
        errors.add(None, f"{ROOT}:subnets", "at least one subnet is required, e.g. 172.30.10.0/24")
    if c.get("gateway") is not None:
        gw = _addr(errors, None, f"{ROOT}:gateway", c["gateway"])
        if gw is not None:
            c["gateway"] = str(gw)
        if gw and subnets and not any(gw in s for s in subnets):
            errors.add(None, f"{ROOT}:gateway", f"{gw} is not on-link: in none of the subnets "
                       f"{', '.join(map(str, subnets))}")
    servers = []
    for i, d in enumerate(_list(errors, None, f"{ROOT}:dns_servers", c.get("dns_servers"))):
        servers.append(str(_addr(errors, None, f"{ROOT}:dns_servers:{i}", d)))
    if isinstance(c.get("dns_servers"), list):
        c["dns_servers"] = servers
    if not isinstance(c.get("domain"), str):
        errors.add(None, f"{ROOT}:domain", "must be a string")
    elif c["domain"]:
        _domain(errors, None, f"{ROOT}:domain", c["domain"])
    for i, d in enumerate(_list(errors, None, f"{ROOT}:dns_search", c.get("dns_search"))):
        _domain(errors, None, f"{ROOT}:dns_search:{i}", d)
    _check_bond(errors, None, f"{ROOT}:bond", c["bond"])
    _check_bridge(errors, None, f"{ROOT}:bridge", c["bridge"])
    _int(errors, None, f"{ROOT}:nic_mtu", c["nic_mtu"], MTU_MIN, MTU_MAX)
    backend = c["network"].get("backend")
    if backend != "auto" and not _one_of(backend, BACKENDS):
        errors.add(None, f"{ROOT}:network:backend", f"{_q(backend)} is not a backend; valid: auto, "
                   + ", ".join(sorted(BACKENDS)) + _suggest(backend, set(BACKENDS) | {"auto"}))
    _int(errors, None, f"{ROOT}:network:rollback_timeout", c["network"].get("rollback_timeout"),
         30, 3600)
    if not _one_of(c["network"].get("confirm"), CONFIRM_MODES):
        errors.add(None, f"{ROOT}:network:confirm", f"{_q(c['network'].get('confirm'))} must be "
                   "auto (the node confirms itself when its management peer answers) or manual")
    chk = c["network"].get("check")
    if not isinstance(chk, dict):
        errors.add(None, f"{ROOT}:network:check", "must be a mapping (gateway: arp|icmp|none)")
    else:
        _unknown(errors, None, f"{ROOT}:network:check", chk, {"gateway"})
        if not _one_of(chk.get("gateway"), GATEWAY_CHECKS):
            errors.add(None, f"{ROOT}:network:check:gateway", f"{_q(chk.get('gateway'))} must be "
                       "arp (neighbour resolution), icmp (echo) or none")
    if c.get("gateway6") is not None:
        gw6 = _addr(errors, None, f"{ROOT}:gateway6", c["gateway6"])
        if gw6 is not None:
            c["gateway6"] = str(gw6)
        if gw6 is not None and gw6.version != 6:
            errors.add(None, f"{ROOT}:gateway6", f"{gw6} is not an IPv6 address")
    lnet = c["network"].get("libvirt_network")
    if lnet is not None and not (isinstance(lnet, str) and _POOL_NAME.match(lnet)):
        errors.add(None, f"{ROOT}:network:libvirt_network",
                   f"{_q(lnet)} is not a libvirt network name (letters, digits, _.+-) or null")
    acct = c["account"]
    if acct.get("name") is not None and not (isinstance(acct["name"], str)
                                             and _USER.match(acct["name"])):
        errors.add(None, f"{ROOT}:account:name", f"{_q(acct['name'])} is not a valid user name")
    for i, g in enumerate(_list(errors, None, f"{ROOT}:account:groups", acct.get("groups"))):
        if not (isinstance(g, str) and _USER.match(g)):
            errors.add(None, f"{ROOT}:account:groups:{i}", f"{_q(g)} is not a valid group name")
    keys = []
    for i, k in enumerate(_list(errors, None, f"{ROOT}:account:ssh_keys", acct.get("ssh_keys"))):
        canon = _ssh_key(k)
        if canon is None:
            errors.add(None, f"{ROOT}:account:ssh_keys:{i}",
                       "is not an SSH public key (expected 'ssh-ed25519 AAAA... comment': a "
                       "known type, a body that decodes, a comment of printable ASCII; no "
                       "options)")
        keys.append(canon)
    if isinstance(acct.get("ssh_keys"), list):
        acct["ssh_keys"] = keys
    # account:sudo is strictly true or false (_check_booleans): a string 'false' or 'no'
    # is not a way to grant NOPASSWD ALL.
    if acct.get("state", "present") not in ("present", "absent"):
        errors.add(None, f"{ROOT}:account:state", f"{_q(acct.get('state'))} must be present "
                   "or absent (absent: its sudoers file and the formula's keys are removed)")
    if acct.get("ssh_keys") and not acct.get("name"):
        errors.add(None, f"{ROOT}:account:name", "ssh_keys are given but no account name")
    if not isinstance(c.get("sysctl"), dict):
        errors.add(None, f"{ROOT}:sysctl", "must be a mapping of sysctl key to value")
    else:
        for k, v in c["sysctl"].items():
            if not _SYSCTL.match(str(k)):
                errors.add(None, f"{ROOT}:sysctl:{k}", "is not a sysctl key (e.g. vm.swappiness)")
            elif v is not None and (isinstance(v, (dict, list, bool))
                                    or not _SYSCTL_VALUE.match(str(v))):
                # null is allowed: it drops a default key from management.
                errors.add(None, f"{ROOT}:sysctl:{k}", f"value must be a number or words "
                           f"(letters, digits, spaces, .:/,+@=-) or null, got {_q(v)}")
    for k in ("hardware_virtualization", "storage_mounted"):
        if not _one_of(c["preflight"].get(k), STRICTNESS):
            errors.add(None, f"{ROOT}:preflight:{k}",
                       f"{_q(c['preflight'].get(k))} must be one of: fail, warn")
    lv = c["libvirt"]
    if not (isinstance(lv.get("unix_sock_group"), str) and _USER.match(lv["unix_sock_group"])):
        errors.add(None, f"{ROOT}:libvirt:unix_sock_group",
                   f"{_q(lv.get('unix_sock_group'))} is not a group name")
    for k in ("unix_sock_ro_perms", "unix_sock_rw_perms"):
        if not (isinstance(lv.get(k), str) and re.match(r"^0[0-7]{3}\Z", lv[k], re.A)):
            errors.add(None, f"{ROOT}:libvirt:{k}", f"{_q(lv.get(k))} must be an octal mode like '0770'"
                       " (quote it in YAML)")
        elif k == "unix_sock_rw_perms" and lv[k][-1] != "0":
            # auth_unix_rw is none: whoever can open the rw socket is root on the node.
            errors.add(None, f"{ROOT}:libvirt:{k}", f"{lv[k]} gives every local account the "
                       "read-write libvirt socket (root on the node); other users need 0 "
                       "(e.g. '0770', the socket group's members only)")
    extra = c["packages"].get("extra")
    if not (isinstance(extra, list) and all(isinstance(p, str) and _PKG.match(p) for p in extra)):
        errors.add(None, f"{ROOT}:packages:extra",
                   f"{_q(extra)} must be a list of package names")
    mig = c["migration"]
    ports = mig.get("ports")
    if not (isinstance(ports, list) and len(ports) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) for p in ports)
            and 1024 <= ports[0] <= ports[1] <= 65535):
        errors.add(None, f"{ROOT}:migration:ports", f"{_q(ports)} must be [first, last], "
                   "1024 <= first <= last <= 65535")
    if not _one_of(mig.get("transport"), MIGRATION_TRANSPORTS):
        errors.add(None, f"{ROOT}:migration:transport", f"{_q(mig.get('transport'))} is not a "
                   "migration transport; valid: ssh, tls (never unauthenticated tcp)"
                   + _suggest(mig.get("transport"), MIGRATION_TRANSPORTS))
    mssh = mig.get("ssh")
    if not isinstance(mssh, dict):
        errors.add(None, f"{ROOT}:migration:ssh", "must be a mapping with private_key and "
                   "public_key")
        mig["ssh"] = mssh = {"private_key": None, "public_key": None}
    priv, pub = mssh.get("private_key"), mssh.get("public_key")
    if priv is not None and priv != WITHHELD and not (
            isinstance(priv, str) and _PRIVATE_KEY.match(priv.strip() + "\n")):
        errors.add(None, f"{ROOT}:migration:ssh:private_key", "is not an OpenSSH private key "
                   "(-----BEGIN OPENSSH PRIVATE KEY----- ... , without a passphrase)")
    if pub is not None:
        if _ssh_key(pub) is None:
            errors.add(None, f"{ROOT}:migration:ssh:public_key",
                       "is not an SSH public key (expected 'ssh-ed25519 AAAA... comment')")
        else:
            mssh["public_key"] = _ssh_key(pub)
    if (priv is None) != (pub is None):
        errors.add(None, f"{ROOT}:migration:ssh:" + ("public_key" if pub is None
                                                      else "private_key"),
                   "both keys of the pair are needed (or neither)")
    if mig.get("transport") == "ssh" and priv is not None and not acct.get("name"):
        errors.add(None, f"{ROOT}:account:name", "migration over SSH logs in to the nodes' "
                   "account: name it (kvmcluster:account:name)")
    elif mig.get("transport") == "ssh" and priv is not None and acct.get("state") == "absent":
        errors.add(None, f"{ROOT}:account:state", "absent, but migration over SSH logs in to "
                   "this account: remove migration:ssh too, or keep the account")
    certs = mig.get("certificates") or {}
    valid = _int(errors, None, f"{ROOT}:migration:certificates:valid_hours",
                 certs.get("valid_hours"), 1, 87600)
    renew = _int(errors, None, f"{ROOT}:migration:certificates:renew_hours",
                 certs.get("renew_hours"), 0, 8760)
    if valid is not None and renew is not None and renew >= valid:
        errors.add(None, f"{ROOT}:migration:certificates:renew_hours", f"{renew} must be below "
                   f"valid_hours ({valid}): every certificate would be due for renewal as "
                   "soon as it is issued")
    if mig.get("transport") == "tls" and not (lv.get("tls") or {}).get("enabled"):
        errors.add(None, f"{ROOT}:migration:transport", "tls needs libvirt TLS "
                   "(kvmcluster:libvirt:tls:enabled: true)")
    lp = c["libvirt_python"]
    ver = lp.get("version")
    if ver is not None and not (isinstance(ver, str) and re.match(r"^\d+(\.\d+){0,3}\Z", ver)):
        errors.add(None, f"{ROOT}:libvirt_python:version", f"{_q(ver)} must be a version like "
                   "'9.0.0' (quoted) or null")
    for k in ("index_url", "find_links"):
        v = lp.get(k)
        if v is not None and not (isinstance(v, str) and re.match(r"^(https?|file)://[^\s]+\Z", v)):
            errors.add(None, f"{ROOT}:libvirt_python:{k}", f"{_q(v)} must be an http(s):// or "
                       "file:// URL or null")
    tls = lv.get("tls") or {}
    for k in ("cert_file", "key_file", "ca_file"):
        _path_ok(errors, None, f"{ROOT}:libvirt:tls:{k}", tls.get(k))
    return subnets


def _check_bond(errors, node, key, bond):
    mode = bond.get("mode")
    if isinstance(mode, int) and not isinstance(mode, bool):
        names = {v: k for k, v in BOND_MODES.items()}  # ints are hashable
        if mode in names:
            bond["mode"] = mode = names[mode]
    if not _one_of(mode, BOND_MODES):
        errors.add(node, f"{key}:mode", f"{_q(mode)} is not a bonding mode; valid: "
                   + ", ".join(BOND_MODES) + _suggest(mode, set(BOND_MODES)))
    if not (isinstance(bond.get("name"), str) and _IFNAME.match(bond["name"])):
        errors.add(node, f"{key}:name", f"{_q(bond.get('name'))} is not an interface name")
    miimon = _int(errors, node, f"{key}:miimon", bond.get("miimon"), 0, 10000)
    for k in ("updelay", "downdelay"):
        v = _int(errors, node, f"{key}:{k}", bond.get(k), 0, 100000)
        if v and miimon and v % miimon:
            errors.add(node, f"{key}:{k}", f"{v} is not a multiple of miimon ({miimon})")
        if v and miimon == 0:
            errors.add(node, f"{key}:{k}", "needs miimon > 0")
    xhp = bond.get("xmit_hash_policy")
    if isinstance(xhp, int) and not isinstance(xhp, bool) and 0 <= xhp < len(XMIT_HASH_POLICIES):
        bond["xmit_hash_policy"] = xhp = XMIT_HASH_POLICIES[xhp]
    if xhp is not None and xhp not in XMIT_HASH_POLICIES:
        errors.add(node, f"{key}:xmit_hash_policy", f"{_q(xhp)} is not a hash policy; valid: "
                   + ", ".join(XMIT_HASH_POLICIES) + _suggest(xhp, set(XMIT_HASH_POLICIES)))
    if bond.get("lacp_rate") not in ("slow", "fast"):
        errors.add(node, f"{key}:lacp_rate", f"{_q(bond.get('lacp_rate'))} must be slow or fast")
    _int(errors, node, f"{key}:mtu", bond.get("mtu"), MTU_MIN, MTU_MAX)


def _check_bridge(errors, node, key, br):
    if not (isinstance(br.get("name"), str) and _IFNAME.match(br["name"])):
        errors.add(node, f"{key}:name", f"{_q(br.get('name'))} is not an interface name")
    if br.get("mtu") is not None:
        _int(errors, node, f"{key}:mtu", br["mtu"], MTU_MIN, MTU_MAX)
    _bool(errors, node, f"{key}:stp", br.get("stp"))
    _int(errors, node, f"{key}:forward_delay", br.get("forward_delay"), 0, 30)


def _check_node(errors, c, subnets, name, entry, self_id, self_os_family):
    key = f"{ROOT}:nodes:{name}"
    if not _HOSTNAME.match(name):
        errors.add(name, key, f"node id {_q(name)} is not a valid host name")
    if not isinstance(entry, dict):
        errors.add(name, key, "must be a mapping with at least `ip` and `nic` or `bond`")
        return {}
    _unknown(errors, name, key, entry, NODE_KEYS)
    out = {"name": name}
    hostname = entry.get("hostname", name)
    if not (isinstance(hostname, str) and _HOSTNAME.match(hostname)):
        errors.add(name, f"{key}:hostname", f"{_q(hostname)} is not a valid host name")
    out["hostname"] = str(hostname)
    out["fqdn"] = f"{hostname}.{c['domain']}" if c.get("domain") else str(hostname)

    iface = None
    if "ip" not in entry:
        errors.add(name, f"{key}:ip", "is required (address/prefix, e.g. 172.30.10.41/24)")
    else:
        try:
            iface = _canonical(entry["ip"], ipaddress.ip_interface)
            if "/" not in str(entry["ip"]):
                errors.add(name, f"{key}:ip", f"{_q(entry['ip'])} needs a prefix length, e.g. "
                           f"{entry['ip']}/24")
                iface = None
        except ValueError:
            errors.add(name, f"{key}:ip", f"{_q(entry['ip'])} is not an address/prefix")
    if iface is not None:
        net = iface.network
        if subnets and net not in subnets:
            errors.add(name, f"{key}:ip", f"{entry['ip']} is not in "
                       + ("any cluster subnet" if len(subnets) > 1 else "the cluster subnet")
                       + f" ({', '.join(map(str, subnets))})")
        elif iface.ip in (net.network_address, net.broadcast_address) and net.prefixlen < 31:
            errors.add(name, f"{key}:ip", f"{iface.ip} is the network or broadcast address of {net}")
        out.update(ip=str(iface.ip), prefix=net.prefixlen, address=str(iface),
                   network=str(net))

    gw = entry.get("gateway", c.get("gateway"))
    gw_key = f"{key}:gateway" if "gateway" in entry else f"{ROOT}:gateway"
    if gw is not None:
        gwa = _addr(errors, name, gw_key, gw)
        if gwa and iface is not None and gwa not in iface.network:
            errors.add(name, gw_key, f"{gwa} is not on-link for {iface} (not in {iface.network})")
        if gwa and iface is not None and gwa == iface.ip:
            errors.add(name, gw_key, f"{gwa} is the node's own address")
        out["gateway"] = None if gwa is None else str(gwa)
    else:
        out["gateway"] = None
    _check_ip6(errors, c, name, key, entry, iface, out)
    for side in SIDE_NETWORKS:
        # The node's address on a network apart from the guests' (checked against that
        # network in _check_networks, once the networks are known).
        field = f"{side}_ip"
        out[field] = None
        if entry.get(field) is not None:
            sip = _addr(errors, name, f"{key}:{field}", entry[field])
            out[field] = None if sip is None else str(sip)
    out["ipv6_autoconf"] = c["network"].get("ipv6_autoconf", True)
    dns = entry.get("dns_servers", c.get("dns_servers"))
    dns = _list(errors, name, f"{key}:dns_servers" if "dns_servers" in entry
                else f"{ROOT}:dns_servers", dns)
    out["dns_servers"] = []
    for i, d in enumerate(dns):
        if "dns_servers" in entry:
            d = _addr(errors, name, f"{key}:dns_servers:{i}", d)
        out["dns_servers"].append(str(d))
    search_key = f"{key}:dns_search" if "dns_search" in entry else f"{ROOT}:dns_search"
    search = _list(errors, name, search_key, entry.get("dns_search", c.get("dns_search")))
    for i, d in enumerate(search):
        _domain(errors, name, f"{search_key}:{i}", d)
    out["dns_search"] = [str(d) for d in search] or (
        [c["domain"]] if c.get("domain") and isinstance(c["domain"], str) else [])

    # The bridge's port: one NIC or a bond of NICs.
    has_nic, has_bond = "nic" in entry, "bond" in entry
    if has_nic == has_bond:
        errors.add(name, key, "needs exactly one of `nic` (a single NIC) or `bond` (with slaves)")
    if has_nic:
        nic = entry["nic"]
        if not (isinstance(nic, str) and _IFNAME.match(nic)):
            errors.add(name, f"{key}:nic", f"{_q(nic)} is not an interface name")
        mtu = entry.get("mtu", c["nic_mtu"])
        _int(errors, name, f"{key}:mtu", mtu, MTU_MIN, MTU_MAX)
        out["port"] = {"kind": "nic", "name": nic, "slaves": [], "mtu": mtu}
    elif has_bond:
        b_in = entry["bond"]
        if not isinstance(b_in, dict):
            errors.add(name, f"{key}:bond", "must be a mapping with `slaves`")
            b_in = {}
        _unknown(errors, name, f"{key}:bond", b_in, NODE_BOND_KEYS)
        bond = merge(c["bond"], b_in)
        _check_bond(errors, name, f"{key}:bond", bond)
        slaves = _list(errors, name, f"{key}:bond:slaves", bond.get("slaves"))
        if not slaves:
            errors.add(name, f"{key}:bond:slaves", "a bond needs at least one slave NIC")
        seen = set()
        for i, s in enumerate(slaves):
            if not (isinstance(s, str) and _IFNAME.match(s)):
                errors.add(name, f"{key}:bond:slaves:{i}", f"{_q(s)} is not an interface name")
            elif s in seen:
                errors.add(name, f"{key}:bond:slaves:{i}", f"NIC {s} is used twice")
            elif s == bond.get("name"):
                errors.add(name, f"{key}:bond:slaves:{i}", f"{s} is the bond itself")
            if isinstance(s, str):
                seen.add(s)
        if not _one_of(bond.get("mode"), HASHING_MODES) and "xmit_hash_policy" in b_in:
            errors.add(name, f"{key}:bond:xmit_hash_policy",
                       f"only applies to modes {', '.join(sorted(HASHING_MODES))}")
        out["port"] = {"kind": "bond", **{k: v for k, v in bond.items()}, "slaves": slaves}
    if "mac" in entry:
        if not (isinstance(entry["mac"], str) and _MAC.match(entry["mac"])):
            errors.add(name, f"{key}:mac", f"{_q(entry['mac'])} is not a MAC address")
        elif int(entry["mac"].split(":")[0], 16) & 1:
            errors.add(name, f"{key}:mac", f"{entry['mac']} is a multicast address")
        out["mac"] = str(entry["mac"]).lower()

    br_in = entry.get("bridge", {})
    if isinstance(br_in, str):
        br_in = {"name": br_in}
    if not isinstance(br_in, dict):
        errors.add(name, f"{key}:bridge", "must be a bridge name or a mapping")
        br_in = {}
    _unknown(errors, name, f"{key}:bridge", br_in, NODE_BRIDGE_KEYS)
    bridge = merge(c["bridge"], br_in)
    if br_in:
        _check_bridge(errors, name, f"{key}:bridge", bridge)
    port = out.get("port")
    if port:
        if bridge.get("name") in (port.get("name"), *port.get("slaves", [])):
            errors.add(name, f"{key}:bridge:name", f"{_q(bridge['name'])} is also the bridge's "
                       "port")
        pmtu = port.get("mtu")
        if isinstance(bridge.get("mtu"), int) and isinstance(pmtu, int) and bridge["mtu"] > pmtu:
            errors.add(name, f"{key}:bridge:mtu" if "mtu" in br_in else f"{ROOT}:bridge:mtu",
                       f"bridge MTU {bridge['mtu']} exceeds its port's MTU {pmtu}")
        if bridge.get("mtu") is None:
            bridge["mtu"] = pmtu
    out["bridge"] = bridge
    # The node's SSH host keys, as its peers know them (migration over SSH checks them).
    hks = _list(errors, name, f"{key}:ssh_host_keys", entry.get("ssh_host_keys"))
    out["ssh_host_keys"] = []
    for i, hk in enumerate(hks):
        canon = _ssh_key(hk)
        if canon is None:
            errors.add(name, f"{key}:ssh_host_keys:{i}", "is not an SSH public host key "
                       "(the line of /etc/ssh/ssh_host_ed25519_key.pub)")
        else:
            out["ssh_host_keys"].append(" ".join(canon.split()[:2]))

    backend = entry.get("backend", c["network"]["backend"])
    if backend != "auto" and not _one_of(backend, BACKENDS):
        errors.add(name, f"{key}:backend", f"{_q(backend)} is not a backend; valid: auto, "
                   + ", ".join(sorted(BACKENDS)) + _suggest(backend, set(BACKENDS) | {"auto"}))
    family = entry.get("os_family") or (self_os_family if name == self_id else None)
    if family is not None and not _one_of(family, ("Debian", "RedHat")):
        errors.add(name, f"{key}:os_family", f"{_q(family)} is not supported (Debian, RedHat)")
    elif family and _one_of(backend, BACKENDS) and family not in BACKENDS[backend]:
        errors.add(name, f"{key}:backend" if "backend" in entry else f"{ROOT}:network:backend",
                   f"backend {backend} does not exist on {family}; valid there: "
                   + ", ".join(sorted(b for b, f in BACKENDS.items() if family in f)))
    out["backend"] = backend
    out["os_family"] = family
    roles = _list(errors, name, f"{key}:roles", entry.get("roles"))
    for i, r in enumerate(roles):
        if not _one_of(r, ROLES):
            errors.add(name, f"{key}:roles:{i}", f"{_q(r)} is not a role; valid: "
                       + ", ".join(sorted(ROLES)) + _suggest(r, ROLES))
    named = [r for r in roles if isinstance(r, str)]
    out["roles"] = list(named)
    # A node runs guests unless it is a management node only (or says hypervisor too).
    out["hypervisor"] = "hypervisor" in named or "management" not in named
    out["management"] = "management" in named
    # A management-only node keeps its own NIC unless its entry asks for a bridge.
    out["takeover"] = out["hypervisor"] or "bridge" in entry
    return out


def _check_ip6(errors, c, name, key, entry, iface, out):
    """Optional static IPv6 on the bridge: ``ip6`` (address/prefix), ``gateway6`` on-link."""
    out["address6"], out["gateway6"] = [], None
    if entry.get("ip6") is None:
        if entry.get("gateway6") is not None:
            errors.add(name, f"{key}:gateway6", "is given but the node has no ip6")
        return
    raw = entry["ip6"]
    try:
        if not isinstance(raw, str) or "/" not in raw:
            raise ValueError
        if6 = _canonical(raw, ipaddress.ip_interface)
        if if6.version != 6:
            raise ValueError
    except ValueError:
        errors.add(name, f"{key}:ip6", f"{_q(str(raw)[:80])} is not an IPv6 address/prefix, "
                   "e.g. fd00:30:10::41/64")
        return
    if iface is not None and iface.version == 6:
        errors.add(name, f"{key}:ip6", "the node's ip is already IPv6; ip6 adds one beside IPv4")
        return
    if if6.ip.is_link_local or if6.ip.is_multicast or if6.ip.is_unspecified:
        errors.add(name, f"{key}:ip6", f"{if6.ip} is not a unicast global or ULA address")
        return
    out["address6"] = [str(if6)]
    gw = entry.get("gateway6", c.get("gateway6"))
    gw_key = f"{key}:gateway6" if "gateway6" in entry else f"{ROOT}:gateway6"
    if gw is not None:
        gwa = _addr(errors, name, gw_key, gw)
        if gwa is not None and (gwa.version != 6 or (gwa not in if6.network
                                                     and not gwa.is_link_local)):
            errors.add(name, gw_key, f"{gwa} is not on-link for {if6} (not in {if6.network})")
        elif gwa is not None and gwa == if6.ip:
            errors.add(name, gw_key, f"{gwa} is the node's own address")
        else:
            out["gateway6"] = str(gwa) if gwa is not None else None


def _check_migration(errors, c, nodes):
    """Over SSH the nodes check each other's host keys: every hypervisor needs them."""
    mig = c.get("migration") or {}
    if not (mig.get("enabled") is True and mig.get("transport") == "ssh"
            and isinstance(mig.get("ssh"), dict) and mig["ssh"].get("private_key")):
        return
    hypervisors = [n for n, e in nodes.items() if e.get("hypervisor", True)]
    if len(hypervisors) < 2:
        return
    for name in hypervisors:
        if not nodes[name].get("ssh_host_keys"):
            errors.add(name, f"{ROOT}:nodes:{name}:ssh_host_keys",
                       "needed for migration over SSH (the peers check this node's host key; "
                       "`salt-run kvmcluster.host_keys` prints every node's)")


def _check_resolvers(errors, c, nodes):
    """A node whose bridge the formula configures gets its resolvers from the model: none
    would leave it without DNS after the takeover (resolv.conf with no nameserver). Refused
    unless the site's DNS is declared (dns:external) and serves the node otherwise."""
    if c["network"].get("manage") is not True or (c.get("dns") or {}).get("external") is True:
        return
    for name, n in nodes.items():
        if n.get("takeover") and not n.get("dns_servers") and n.get("ip"):
            own = isinstance(c["nodes"].get(name), dict) and "dns_servers" in c["nodes"][name]
            errors.add(name, f"{ROOT}:nodes:{name}:dns_servers" if own
                       else f"{ROOT}:dns_servers",
                       "no DNS server for a node whose network the formula configures: list "
                       "the management nodes' addresses (they serve the cluster's DNS), or "
                       f"set {ROOT}:dns:external: true where the site's resolvers are "
                       "configured otherwise")


def _check_across(errors, c, nodes):
    _check_resolvers(errors, c, nodes)
    seen_ip, seen_mac, seen_host = {}, {}, {}
    gw = str(c.get("gateway")) if c.get("gateway") is not None else None
    for name, n in nodes.items():
        key = f"{ROOT}:nodes:{name}"
        if n.get("ip"):
            if n["ip"] in seen_ip:
                errors.add(name, f"{key}:ip", f"{n['ip']} is also the address of node "
                           f"{seen_ip[n['ip']]}")
            seen_ip.setdefault(n["ip"], name)
            if gw and n["ip"] == gw:
                errors.add(name, f"{key}:ip", f"{n['ip']} is the cluster gateway")
        for a in n.get("address6") or []:
            ip6 = a.split("/")[0]
            if ip6 in seen_ip:
                errors.add(name, f"{key}:ip6", f"{ip6} is also the address of node "
                           f"{seen_ip[ip6]}")
            seen_ip.setdefault(ip6, name)
        if n.get("mac"):
            if n["mac"] in seen_mac:
                errors.add(name, f"{key}:mac", f"{n['mac']} is also the MAC of node "
                           f"{seen_mac[n['mac']]}")
            seen_mac.setdefault(n["mac"], name)
        h = n.get("hostname", "").lower()
        if h and _HOSTNAME.match(h):  # an invalid one has its own error
            if h in seen_host:
                errors.add(name, f"{key}:hostname", f"{h} is also the host name of node "
                           f"{seen_host[h]}")
            seen_host.setdefault(h, name)


def _check_storage(errors, c, nodes, subnets=(), storage_net=None):
    st = c["storage"]
    pri, sec = st["primary"], st["secondary"]
    k = f"{ROOT}:storage"
    pri_ok = _path_ok(errors, None, f"{k}:primary:path", pri.get("path"))
    if not (isinstance(pri.get("name"), str) and _POOL_NAME.match(pri["name"])):
        errors.add(None, f"{k}:primary:name", f"{_q(pri.get('name'))} is not a libvirt pool name")
    mf = pri.get("min_free_gb")
    if isinstance(mf, bool) or not isinstance(mf, (int, float)) or mf < 0:
        errors.add(None, f"{k}:primary:min_free_gb", f"{_q(mf)} must be a number >= 0")
    if sec.get("enabled") is not True:
        return
    servers = [n for n, v in nodes.items() if "nfs_server" in v.get("roles", [])]
    named = sec.get("server")
    if not _one_of(sec.get("type"), SHARE_TYPES):
        errors.add(None, f"{k}:secondary:type", f"{_q(sec.get('type'))} must be nfs (the "
                   "formula's own export) or external (a share the site mounts on every node)")
        return
    if sec["type"] == "external":
        # A filesystem the site already mounts at the mountpoint on every node: no server,
        # no export; a dir pool over it.
        if named is not None or servers:
            errors.add(None, f"{k}:secondary:server", "the secondary storage is external: no "
                       f"node serves it (server {_q(named)}, nfs_server role on "
                       f"{', '.join(servers) or 'none'})")
        mnt_ok = _path_ok(errors, None, f"{k}:secondary:mountpoint", sec.get("mountpoint"))
        if pri_ok and mnt_ok and _nested(pri["path"], sec["mountpoint"]):
            errors.add(None, f"{k}:secondary:mountpoint", f"{sec['mountpoint']} and the primary "
                       f"pool path {pri['path']} are nested; they must be separate trees")
        pool = sec.get("pool") or {}
        if not (isinstance(pool.get("name"), str) and _POOL_NAME.match(pool["name"])):
            errors.add(None, f"{k}:secondary:pool:name", f"{_q(pool.get('name'))} is not a "
                       "pool name")
        elif pool["name"] == pri.get("name"):
            errors.add(None, f"{k}:secondary:pool:name", f"{pool['name']} is also the primary "
                       "pool's name")
        sec.update(server=None, address=None, clients=[], pool={**pool, "type": "dir"})
        return
    if named is not None:
        if str(named) not in nodes:
            errors.add(None, f"{k}:secondary:server", f"{_q(named)} is not a node of "
                       f"{ROOT}:nodes{_suggest(named, set(nodes))}")
        elif servers and servers != [str(named)]:
            errors.add(None, f"{k}:secondary:server", f"{named} is named, but nodes "
                       f"{', '.join(servers)} have the nfs_server role")
        servers = [str(named)] if str(named) in nodes else servers
    if len(servers) != 1:
        errors.add(None, f"{k}:secondary:server", "secondary storage is enabled: exactly one NFS "
                   f"server is needed (found {len(servers)}: {', '.join(servers) or 'none'}); set "
                   f"{k}:secondary:server to a node id, or {k}:secondary:type: external for a "
                   "share the site already mounts")
    else:
        sec["server"] = servers[0]
    exp_ok = _path_ok(errors, None, f"{k}:secondary:export_path", sec.get("export_path"))
    mnt_ok = _path_ok(errors, None, f"{k}:secondary:mountpoint", sec.get("mountpoint"))
    if pri_ok and exp_ok and _nested(pri["path"], sec["export_path"]):
        errors.add(None, f"{k}:secondary:export_path", f"{sec['export_path']} and the primary "
                   f"pool path {pri['path']} are nested; they must be separate trees")
    if exp_ok and mnt_ok and sec["export_path"] == sec["mountpoint"]:
        errors.add(None, f"{k}:secondary:mountpoint", f"{sec['mountpoint']} is also the export "
                   "path; the server bind-mounts its export at the mountpoint, so they differ")
    if pri_ok and mnt_ok and _nested(pri["path"], sec["mountpoint"]):
        errors.add(None, f"{k}:secondary:mountpoint", f"{sec['mountpoint']} and the primary "
                   f"pool path {pri['path']} are nested; they must be separate trees")
    pool = sec.get("pool") or {}
    if not (isinstance(pool.get("name"), str) and _POOL_NAME.match(pool["name"])):
        errors.add(None, f"{k}:secondary:pool:name", f"{_q(pool.get('name'))} is not a pool name")
    elif pool["name"] == pri.get("name"):
        errors.add(None, f"{k}:secondary:pool:name", f"{pool['name']} is also the primary pool's name")
    if not _one_of(pool.get("type"), POOL_TYPES):
        errors.add(None, f"{k}:secondary:pool:type", f"{_q(pool.get('type'))} must be netfs or dir")
    opts = _list(errors, None, f"{k}:secondary:mount_options", sec.get("mount_options"))
    for i, o in enumerate(opts):
        if not (isinstance(o, str) and re.match(r"^[A-Za-z0-9_.=:/-]+\Z", o)):
            errors.add(None, f"{k}:secondary:mount_options:{i}", f"{_q(o)}: one option per "
                       "list item (letters, digits, _.=:/-)")
    if "hard" in opts and "soft" in opts:
        errors.add(None, f"{k}:secondary:mount_options", "has both hard and soft")
    eopts = _list(errors, None, f"{k}:secondary:export_options", sec.get("export_options"))
    for o in eopts:
        if not (isinstance(o, str) and re.match(r"^[A-Za-z0-9_.=:/-]+\Z", o)):
            errors.add(None, f"{k}:secondary:export_options", f"{_q(o)}: one option per list item")
    if "root_squash" in eopts and "no_root_squash" in eopts:
        errors.add(None, f"{k}:secondary:export_options", "has both root_squash and "
                   "no_root_squash")
    for o in eopts:
        if isinstance(o, str) and o.split("=", 1)[0] in ("anonuid", "anongid") and \
                not re.match(r"^anon[ug]id=\d{1,10}\Z", o):
            errors.add(None, f"{k}:secondary:export_options", f"{_q(o)}: anonuid and anongid "
                       "take a number")
    clients = []
    for i, cl in enumerate(_list(errors, None, f"{k}:secondary:clients", sec.get("clients"))):
        net = _network(errors, None, f"{k}:secondary:clients:{i}", cl)
        if net is None:
            continue
        # Parsed, not compared as text: 0.0.0.0/0.0.0.0, x.x.x.x/0 and ::/00 are the world.
        if storage_net is not None:
            if not (net.version == storage_net.version and net.subnet_of(storage_net)):
                errors.add(None, f"{k}:secondary:clients:{i}", f"{net} is not inside "
                           f"{ROOT}:networks:storage ({storage_net}): the export goes to the "
                           "nodes' storage addresses only (leave clients empty for exactly "
                           "those)")
                continue
        elif not any(net.version == s.version and net.subnet_of(s) for s in subnets):
            errors.add(None, f"{k}:secondary:clients:{i}", f"{net} is not inside a cluster "
                       f"subnet ({', '.join(map(str, subnets)) or 'none'}): the export goes "
                       "to the nodes' addresses only (leave clients empty for exactly those)")
            continue
        clients.append(str(net.network_address) if net.num_addresses == 1 else str(net))
    if isinstance(sec.get("clients"), list):
        sec["clients"] = clients
    _int(errors, None, f"{k}:secondary:wait_timeout", sec.get("wait_timeout"), 5, 3600)
    # Where the share is served and mounted from: the server's storage address when the
    # site has a storage network, its own address otherwise.
    field = "ip" if storage_net is None else "storage_ip"
    # Only a server the checks above settled on (a hostile value may be any shape).
    server = nodes.get(sec["server"]) if isinstance(sec.get("server"), str) else None
    server = server or {}
    sec["address"] = server.get(field)
    if not sec.get("clients"):
        # The nodes that run guests (and the server); a management-only node mounts nothing.
        sec["clients"] = sorted((n[field] for name, n in nodes.items() if n.get(field)
                                 and (n.get("hypervisor", True) or name == sec.get("server"))),
                                key=lambda a: (ipaddress.ip_address(a).version,
                                               ipaddress.ip_address(a)))


def _side_networks(errors, c, subnets):
    """The networks apart from the guests' (``networks:migration``, ``networks:storage``),
    parsed, canonical, and sharing nothing with the cluster subnets (where the guests are).
    A site may give both the same network. Returns {side: network or None}."""
    nets = {}
    given = c.get("networks") or {}
    for side, carries in SIDE_NETWORKS.items():
        k = f"{ROOT}:networks:{side}"
        raw, net = given.get(side), None
        if raw is not None:
            try:
                net = _canonical(raw, lambda v: ipaddress.ip_network(v, strict=True))
            except ValueError as exc:
                errors.add(None, k, f"{_q(raw)} is not a network ({_q(str(exc), 120)})")
        if net is not None:
            c["networks"][side] = str(net)
            for s in subnets:
                if s.version == net.version and s.overlaps(net):
                    errors.add(None, k, f"{net} overlaps the cluster subnet {s}, where the "
                               f"guests are: the network for {carries} must be one no guest "
                               "can reach")
        nets[side] = net
    sec = c["storage"]["secondary"]
    if nets["storage"] is not None and not (sec.get("enabled") is True
                                            and sec.get("type") == "nfs"):
        errors.add(None, f"{ROOT}:networks:storage", "is set, but the formula serves no NFS "
                   "share (storage:secondary:enabled true with type nfs): a site's own share "
                   "is mounted over the network the site chose")
        nets["storage"] = None
    return nets


def _side_members(c, nodes, side):
    """The nodes that need an address on a side network: every hypervisor migrates; the
    NFS server and the nodes that mount the share use the storage network."""
    if side == "migration":
        return [n for n, v in nodes.items() if v.get("hypervisor", True)]
    server = c["storage"]["secondary"].get("server")
    return [n for n, v in nodes.items() if v.get("hypervisor", True) or n == server]


def _check_networks(errors, c, nodes, nets, vms, seen):
    """No guest address (a VM's ip, a lease, the DHCP range) in a side network, every node
    that uses one has its address there (``nodes:<id>:<side>_ip``, on an interface the
    site configures), addresses are unique, and none is given without its network."""
    guests = [(v["ip"], f"VM {n}") for n, v in (vms or {}).items() if v.get("ip")]
    guests += [(h.get("ip"), f"lease {hn}") for hn, h in
               ((c.get("dhcp") or {}).get("hosts") or {}).items() if isinstance(h, dict)]
    lo, hi = (seen or {}).get("range", (None, None))
    guests += [(str(a), "the DHCP range") for a in (lo, hi) if a is not None]
    owner = {}  # address -> the node it belongs to, across the side networks
    for side, carries in SIDE_NETWORKS.items():
        k, net = f"{ROOT}:networks:{side}", nets.get(side)
        if net is not None:
            for addr, who in guests:
                try:
                    if ipaddress.ip_address(str(addr)) in net:
                        errors.add(None, k, f"{net} holds {addr} ({who}): guest addresses "
                                   f"stay out of the network for {carries}")
                except ValueError:
                    pass  # its own error
        if net is None and (c.get("networks") or {}).get(side) is not None:
            continue  # the network's own error says why; its addresses wait for it
        members = set(_side_members(c, nodes, side)) if net is not None else set()
        taken = {}
        for name, n in nodes.items():
            key = f"{ROOT}:nodes:{name}:{side}_ip"
            sip = n.get(f"{side}_ip")
            if net is None:
                if sip is not None:
                    errors.add(name, key, f"{sip} is given but {k} is not set")
                continue
            if name not in members:
                if sip is not None:
                    errors.add(name, key, f"{sip} is given, but {name} does not use {k} "
                               f"({carries})")
                continue
            if sip is None:
                raw = c["nodes"].get(name)
                if not (isinstance(raw, dict) and raw.get(f"{side}_ip") is not None):
                    # (one given but invalid has its own error)
                    errors.add(name, key, f"is required: {k} is {net}, and {name} uses it "
                               f"for {carries}")
                continue
            addr = ipaddress.ip_address(sip)
            if addr not in net or (net.prefixlen < net.max_prefixlen - 1 and addr in (
                    net.network_address, net.broadcast_address)):
                errors.add(name, key, f"{sip} is not a host address of {k} ({net})")
            elif sip in taken:
                errors.add(name, key, f"{sip} is also {taken[sip]}'s")
            elif owner.get(sip, name) != name:
                errors.add(name, key, f"{sip} is {owner[sip]}'s address on another network")
            taken[sip] = owner[sip] = name


def _check_clients_guests(errors, c, vms, seen):
    """The export's clients never cover a guest's address: a VM's static ip, a lease, the
    dynamic range. A source address on the guests' network is not an identity."""
    sec = c["storage"]["secondary"]
    if errors or sec.get("enabled") is not True or not sec.get("clients"):
        return  # only over values already canonical
    guests = [(ipaddress.ip_address(v["ip"]), f"VM {n}") for n, v in vms.items() if v.get("ip")]
    for hname, h in (c["dhcp"].get("hosts") or {}).items():
        if isinstance(h, dict) and isinstance(h.get("ip"), str):
            try:
                guests.append((ipaddress.ip_address(h["ip"]), f"lease {hname}"))
            except ValueError:
                pass  # its own error
    lo, hi = seen["range"]
    for i, cl in enumerate(sec["clients"]):
        net = ipaddress.ip_network(cl, strict=False)
        hit = [who for a, who in guests if a.version == net.version and a in net]
        if lo is not None and lo.version == net.version and not (
                hi < net.network_address or lo > net.broadcast_address):
            hit.append(f"the DHCP range {lo}..{hi}")
        if hit:
            errors.add(None, f"{ROOT}:storage:secondary:clients:{i}", f"{cl} covers guest "
                       f"addresses ({', '.join(hit[:3])}): a guest could mount the share; list "
                       "the nodes' addresses (or leave clients empty)")


def _in_subnets(addr, subnets):
    return any(addr.version == n.version and addr in n for n in subnets)


def _check_dns_dhcp(errors, c, nodes, subnets):
    """DNS and DHCP served by the management node(s): records, leases and the range
    consistent with each other and with the nodes, before any host is touched."""
    k = ROOT
    mgmt = {name: n for name, n in nodes.items() if n.get("management")}
    mgmt_addrs = set()
    for n in mgmt.values():
        mgmt_addrs.update(a for a in [n.get("ip"), *[x.split("/")[0] for x in
                                                      n.get("address6") or []]] if a)
    dns, dhcp = c["dns"], c["dhcp"]
    upstream = []
    for i, u in enumerate(_list(errors, None, f"{k}:dns:upstream", dns.get("upstream"))):
        upstream.append(str(_addr(errors, None, f"{k}:dns:upstream:{i}", u)))
    if isinstance(dns.get("upstream"), list):
        dns["upstream"] = upstream
    if dns.get("external") is False and mgmt:
        for name, n in nodes.items():
            for i, d in enumerate(n.get("dns_servers") or []):
                if d not in mgmt_addrs:
                    errors.add(name, f"{k}:nodes:{name}:dns_servers:{i}" if d in
                               [str(x) for x in (c["nodes"][name] or {}).get("dns_servers", [])
                                ] else f"{k}:dns_servers:{i}",
                               f"{_q(d)} is not a management node's address "
                               f"({', '.join(sorted(mgmt_addrs))}); the management nodes serve "
                               f"DNS, or set {k}:dns:external: true")
    taken = {}  # address -> what holds it
    names = {}  # lower-case name -> what it is
    for name, n in nodes.items():
        for a in [n.get("ip"), *[x.split("/")[0] for x in n.get("address6") or []]]:
            if a:
                taken[a] = f"node {name}"
        names[str(n.get("hostname", name)).lower()] = f"node {name}"
    for gw in (c.get("gateway"), c.get("gateway6")):
        try:
            taken.setdefault(str(ipaddress.ip_address(str(gw))), "the gateway")
        except ValueError:
            pass  # absent, or its own error
    for rname, addr in (dns.get("records") or {}).items():
        key = f"{k}:dns:records:{rname}"
        if not (isinstance(rname, str) and _HOSTNAME.match(rname)):
            errors.add(None, key, f"{_q(rname)} is not a DNS name (one label: letters, "
                       "digits, hyphens)")
            continue
        if rname.lower() in names:
            errors.add(None, key, f"{rname} is also the name of {names[rname.lower()]}")
        names.setdefault(rname.lower(), f"record {rname}")
        ra = _addr(errors, None, key, addr)
        if ra is not None:
            dns["records"][rname] = str(ra)
    rng = dhcp.get("range")
    lo = hi = None
    if rng is not None:
        key = f"{k}:dhcp:range"
        if not (isinstance(rng, list) and len(rng) == 2):
            errors.add(None, key, f"{_q(rng)} must be [first, last] addresses or null")
        else:
            lo = _addr(errors, None, f"{key}:0", rng[0])
            hi = _addr(errors, None, f"{key}:1", rng[1])
            if lo is None or hi is None:
                lo = hi = None
            if lo is not None and hi is not None:
                net = next((n for n in subnets if lo.version == n.version and lo in n), None)
                if not subnets:
                    lo = hi = None  # the subnets' own error says why
                elif lo.version != hi.version or net is None or hi not in net:
                    errors.add(None, key, f"{lo}..{hi} is not inside one cluster subnet "
                               f"({', '.join(map(str, subnets))})")
                    lo = hi = None
                elif lo > hi:
                    errors.add(None, key, f"{lo} comes after {hi}")
                    lo = hi = None
                else:
                    inside = sorted((a, who) for a, who in taken.items()
                                    if ipaddress.ip_address(a).version == lo.version
                                    and lo <= ipaddress.ip_address(a) <= hi)
                    for a, who in inside:
                        errors.add(None, key, f"{lo}..{hi} holds {a}, the address of {who}")
    _LEASE = _LEASE_TIME
    if not (isinstance(dhcp.get("lease_time"), str) and _LEASE.match(dhcp["lease_time"])):
        errors.add(None, f"{k}:dhcp:lease_time", f"{_q(dhcp.get('lease_time'))} must be like "
                   "'12h', '30m', '3600' or 'infinite' (quoted)")
    macs = {}
    for hname, h in (dhcp.get("hosts") or {}).items():
        key = f"{k}:dhcp:hosts:{hname}"
        if not (isinstance(hname, str) and _HOSTNAME.match(hname)):
            errors.add(None, key, f"{_q(hname)} is not a DNS name (one label)")
            continue
        if not isinstance(h, dict):
            errors.add(None, key, "must be a mapping with mac and ip")
            continue
        _unknown(errors, None, key, h, {"mac", "ip"})
        if hname.lower() in names:
            errors.add(None, key, f"{hname} is also the name of {names[hname.lower()]}")
        names.setdefault(hname.lower(), f"lease {hname}")
        mac = h.get("mac")
        if not (isinstance(mac, str) and _MAC.match(mac)) or int(str(mac)[:2] or "1", 16) & 1:
            errors.add(None, f"{key}:mac", f"{_q(mac)} is not a unicast MAC address")
        elif mac.lower() in macs:
            errors.add(None, f"{key}:mac", f"{mac} is also the MAC of {macs[mac.lower()]}")
        else:
            macs[mac.lower()] = f"lease {hname}"
        ip = _addr(errors, None, f"{key}:ip", h.get("ip"))
        if ip is None:
            continue
        h["ip"] = str(ip)
        if isinstance(mac, str):
            h["mac"] = mac.lower()
        if subnets and not _in_subnets(ip, subnets):
            errors.add(None, f"{key}:ip", f"{ip} is not in a cluster subnet")
        elif str(ip) in taken:
            errors.add(None, f"{key}:ip", f"{ip} is also the address of {taken[str(ip)]}")
        elif lo is not None and lo.version == ip.version and lo <= ip <= hi:
            errors.add(None, f"{key}:ip", f"{ip} is inside the dynamic range {lo}..{hi}")
        taken.setdefault(str(ip), f"lease {hname}")
    for name, n in nodes.items():
        mac = n.get("mac")
        if mac and mac in macs:
            errors.add(name, f"{k}:nodes:{name}:mac", f"{mac} is also the MAC of {macs[mac]}")
        elif mac:
            macs[mac] = f"node {name}"
    return {"taken": taken, "names": names, "macs": macs, "range": (lo, hi)}


# ---- images and VMs -----------------------------------------------------------------

IMAGE_KEYS = {"volume", "path", "format", "kernel", "initrd", "cmdline"}
VM_KEYS = {"node", "image", "vcpus", "memory_mb", "disk_gb", "disks", "clone", "mac", "ip",
           "autostart", "state", "storage", "antispoof"}
VM_STATES = {"running", "stopped", "absent"}
CLONES = {"full", "linked"}
IMAGE_FORMATS = {"raw", "qcow2"}
DOMAIN_TYPES = {"kvm", "qemu"}
_CMDLINE = re.compile(r"^[\x20-\x7e]{0,1024}\Z", re.A)


def vm_mac(seed, name):
    """The MAC a VM gets when its pillar names none: stable for the cluster and the name,
    in QEMU's locally administered range 52:54:00."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _check_images(errors, c):
    out = {}
    sec = c["storage"]["secondary"]
    images = c.get("images") or {}
    for name, img in images.items():
        key = f"{ROOT}:images:{name}"
        if not (isinstance(name, str) and _POOL_NAME.match(name)):
            errors.add(None, key, f"{_q(name)} is not an image name (letters, digits, _.+-)")
            continue
        if not isinstance(img, dict):
            errors.add(None, key, "must be a mapping with `volume` or `path`")
            continue
        _unknown(errors, None, key, img, IMAGE_KEYS)
        res = {"name": name, "volume": None, "path": None,
               "format": img.get("format", "qcow2"), "kernel": img.get("kernel"),
               "initrd": img.get("initrd"), "cmdline": img.get("cmdline")}
        if sec.get("enabled") is not True:
            errors.add(None, key, f"golden images live on the secondary storage; enable "
                       f"{ROOT}:storage:secondary first")
        if ("volume" in img) == ("path" in img):
            errors.add(None, key, "needs exactly one of `volume` (a volume of the secondary "
                       "pool) or `path` (a file on the shared storage)")
        elif "volume" in img:
            if not (isinstance(img["volume"], str) and _POOL_NAME.match(img["volume"])):
                errors.add(None, f"{key}:volume", f"{_q(img['volume'])} is not a volume name")
            res["volume"] = img["volume"]
        elif _path_ok(errors, None, f"{key}:path", img["path"]):
            mp = sec.get("mountpoint")
            if isinstance(mp, str) and not img["path"].startswith(mp.rstrip("/") + "/"):
                errors.add(None, f"{key}:path", f"{img['path']} is not on the shared storage "
                           f"({_cut(mp)}): every node must see the same file")
            res["path"] = img["path"]
        if not _one_of(res["format"], IMAGE_FORMATS):
            errors.add(None, f"{key}:format", f"{_q(res['format'])} must be raw or qcow2")
        for part in ("kernel", "initrd"):
            if img.get(part) is not None and _path_ok(errors, None, f"{key}:{part}", img[part]):
                mp = sec.get("mountpoint")
                if isinstance(mp, str) and not img[part].startswith(mp.rstrip("/") + "/"):
                    # QEMU reads it as root's choice: never any file of the host.
                    errors.add(None, f"{key}:{part}", f"{img[part]} is not on the shared "
                               f"storage ({_cut(mp)}), where golden images and their boot files "
                               "live")
        if img.get("initrd") is not None and img.get("kernel") is None:
            errors.add(None, f"{key}:initrd", "an initrd needs a kernel")
        if img.get("cmdline") is not None:
            if img.get("kernel") is None:
                errors.add(None, f"{key}:cmdline", "a kernel command line needs a kernel")
            if not (isinstance(img["cmdline"], str) and _CMDLINE.match(img["cmdline"])):
                errors.add(None, f"{key}:cmdline", f"{_q(img['cmdline'])} must be one line of "
                           "printable ASCII (at most 1024 characters)")
        out[name] = res
    return out


def _check_vm_defaults(errors, d):
    k = f"{ROOT}:vm"
    if not _one_of(d.get("domain_type"), DOMAIN_TYPES):
        errors.add(None, f"{k}:domain_type", f"{_q(d.get('domain_type'))} must be kvm (hardware "
                   "virtualization) or qemu (emulation, for labs)")
    _int(errors, None, f"{k}:shutdown_timeout", d.get("shutdown_timeout"), 5, 3600)
    _int(errors, None, f"{k}:memory_reserve_mb", d.get("memory_reserve_mb"), 0, 1 << 22)
    ratio = d.get("vcpu_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
        errors.add(None, f"{k}:vcpu_ratio", f"{_q(ratio)} must be a number in (0, 64]: vcpus "
                   "per host CPU")
    if d.get("mac_seed") is not None and not isinstance(d["mac_seed"], str):
        errors.add(None, f"{k}:mac_seed", f"{_q(d['mac_seed'])} must be a string")


def _check_vms(errors, c, nodes, subnets, seen):
    """Images and VMs, consistent with the nodes, names, leases and the dynamic range."""
    images = _check_images(errors, c)
    d = c["vm"]
    _check_vm_defaults(errors, d)
    seed = d.get("mac_seed") or c.get("domain") or "kvmcluster"
    taken, names, macs = dict(seen["taken"]), dict(seen["names"]), dict(seen["macs"])
    lo, hi = seen["range"]
    out = {}
    for name, vm in (c.get("vms") or {}).items():
        key = f"{ROOT}:vms:{name}"
        if not (isinstance(name, str) and _HOSTNAME.match(name)):
            errors.add(None, key, f"{_q(name)} is not a VM name (one DNS label: letters, "
                       "digits, hyphens)")
            continue
        if not isinstance(vm, dict):
            errors.add(None, key, "must be a mapping with at least `node` and `image`")
            continue
        _unknown(errors, None, key, vm, VM_KEYS)
        if name.lower() in names:
            errors.add(None, key, f"{name} is also the name of {names[name.lower()]}")
        names.setdefault(name.lower(), f"VM {name}")
        res = {"name": name, "fqdn": f"{name}.{c['domain']}" if c.get("domain") else name}
        node = vm.get("node")
        if node is None:
            errors.add(None, f"{key}:node", "is required: the node the VM runs on")
        elif str(node) not in nodes:
            errors.add(None, f"{key}:node", f"{_q(node)} is not a node of {ROOT}:nodes"
                       f"{_suggest(node, set(nodes))}")
        elif not nodes[str(node)].get("hypervisor", True):
            errors.add(None, f"{key}:node", f"{node} is a management node, not a hypervisor")
        res["node"] = None if node is None else str(node)
        image = vm.get("image")
        if image is None:
            errors.add(None, f"{key}:image", "is required: a golden image of "
                       f"{ROOT}:images")
        elif not isinstance(image, str) or image not in (c.get("images") or {}):
            errors.add(None, f"{key}:image", f"{_q(image)} is not an image of {ROOT}:images"
                       f"{_suggest(image, set(c.get('images') or {}))}")
        res["image"] = image
        res["vcpus"] = _int(errors, None, f"{key}:vcpus", vm.get("vcpus", d.get("vcpus")), 1, 512)
        res["memory_mb"] = _int(errors, None, f"{key}:memory_mb",
                                vm.get("memory_mb", d.get("memory_mb")), 32, 1 << 22)
        res["disk_gb"] = _int(errors, None, f"{key}:disk_gb",
                              vm.get("disk_gb", d.get("disk_gb")), 1, 1 << 16)
        disks = []
        for i, x in enumerate(_list(errors, None, f"{key}:disks", vm.get("disks"))[:16]):
            if not (isinstance(x, dict) and set(x) == {"size_gb"}):
                errors.add(None, f"{key}:disks:{i}", f"{_q(x)} must be a mapping with size_gb "
                           "only")
                continue
            disks.append({"size_gb": _int(errors, None, f"{key}:disks:{i}:size_gb",
                                          x["size_gb"], 1, 1 << 16)})
        res["disks"] = disks
        res["clone"] = vm.get("clone", d.get("clone"))
        if not _one_of(res["clone"], CLONES):
            errors.add(None, f"{key}:clone", f"{_q(res['clone'])} must be full (a copy in the "
                       "primary pool) or linked (qcow2 backed by the golden image)")
        # Where its disks live: the node's primary pool, or the shared secondary storage
        # (its disks then stay put when it migrates).
        res["storage"] = vm.get("storage", d.get("storage", "primary"))
        if not _one_of(res["storage"], ("primary", "secondary")):
            errors.add(None, f"{key}:storage", f"{_q(res['storage'])} must be primary (the "
                       "node's pool) or secondary (the shared storage)")
        elif res["storage"] == "secondary" and not c["storage"]["secondary"].get("enabled"):
            errors.add(None, f"{key}:storage", "secondary, but kvmcluster:storage:secondary is "
                       "not enabled")
        st = c["storage"]
        res["pool"] = (st["secondary"].get("pool") or {}).get("name") \
            if res["storage"] == "secondary" else st["primary"].get("name")
        res["state"] = vm.get("state", d.get("state"))
        if not _one_of(res["state"], VM_STATES):
            errors.add(None, f"{key}:state", f"{_q(res['state'])} must be running, stopped or "
                       "absent")
        res["autostart"] = vm.get("autostart", d.get("autostart"))
        _bool(errors, None, f"{key}:autostart", res["autostart"])
        res["antispoof"] = vm.get("antispoof", d.get("antispoof"))
        _bool(errors, None, f"{key}:antispoof", res["antispoof"])
        mac = vm.get("mac")
        if mac is None:
            mac = vm_mac(seed, name)
            mkey = f"{key} (derived MAC)"
        else:
            mkey = f"{key}:mac"
            if not (isinstance(mac, str) and _MAC.match(mac)) or int(mac[:2], 16) & 1:
                errors.add(None, mkey, f"{_q(mac)} is not a unicast MAC address")
                mac = None
        if mac is not None:
            mac = mac.lower()
            if mac in macs:
                errors.add(None, mkey, f"{mac} is also the MAC of {macs[mac]}"
                           + ("; set this VM's mac" if mkey.endswith("MAC)") else ""))
            macs.setdefault(mac, f"VM {name}")
        res["mac"] = mac
        res["ip"] = None
        if vm.get("ip") is not None:
            ip = _addr(errors, None, f"{key}:ip", vm["ip"])
            if ip is not None:
                if subnets and not _in_subnets(ip, subnets):
                    errors.add(None, f"{key}:ip", f"{ip} is not in a cluster subnet")
                elif str(ip) in taken:
                    errors.add(None, f"{key}:ip", f"{ip} is also the address of "
                               f"{taken[str(ip)]}")
                elif lo is not None and lo.version == ip.version and lo <= ip <= hi:
                    errors.add(None, f"{key}:ip", f"{ip} is inside the dynamic range "
                               f"{lo}..{hi}")
                taken.setdefault(str(ip), f"VM {name}")
                res["ip"] = str(ip)
        res.update(domain_type=d.get("domain_type"), shutdown_timeout=d.get("shutdown_timeout"))
        out[name] = res
    return images, out


def format_errors(errors, node=None, teller=None):
    """Every error, or, on a node that is not the ``teller``, the node's own errors and a
    count of the rest: a cluster error is printed once in a run's output, not once per
    node. The teller is the first node of the pillar (:func:`teller`)."""
    head = f"kvmcluster pillar is invalid ({len(errors)} error{'s' * (len(errors) != 1)}); " \
           "nothing was changed:"
    if node is None or teller is None or node == teller:
        return "\n".join([head] + [f"  - {e}" for e in errors])
    own = [e for e in errors if e.node == _printable(node)]
    rest = len(errors) - len(own)
    lines = [head] + [f"  - {e}" for e in own]
    if rest:
        lines.append(f"  - and {rest} of the cluster or other nodes, listed once, by {teller} "
                     "(`salt-call --local kvmcluster_model.validate` lists them all)")
    return "\n".join(lines)


def teller(cluster):
    """The node whose output lists every error of the cluster: the first node id of the
    pillar, or None when the pillar has no node list to choose from."""
    nodes = cluster.get("nodes") if isinstance(cluster, dict) else None
    if not isinstance(nodes, dict) or not nodes:
        return None
    try:
        return _printable(sorted(str(k) for k in nodes)[0])
    except Exception:  # pylint: disable=broad-except
        return None


def node_view(model, node_id):
    """The model as one node sees it: cluster settings plus `self` (its own entry)."""
    if node_id not in model["nodes"]:
        raise CommandExecutionError(
            f"node {_q(node_id)} is not in pillar {ROOT}:nodes "
            f"(nodes: {', '.join(sorted(model['nodes']))}); add it there or fix its minion id")
    view = dict(model)
    view["self"] = model["nodes"][node_id]
    return view


# ---- execution functions ------------------------------------------------------------

def _defaults(parameters=None):
    if parameters is None:
        import yaml  # pylint: disable=import-outside-toplevel

        text = __salt__["cp.get_file_str"]("salt://kvmcluster/parameters/defaults.yaml")
        if not text:
            raise CommandExecutionError("cannot read salt://kvmcluster/parameters/defaults.yaml; "
                                        "pass parameters= or put the formula in file_roots")
        parameters = yaml.safe_load(text)["values"]
    return parameters["cluster"]


def render_errors(pillar):
    """
    The pillar's own render errors (Salt's ``_errors``), as messages. A pillar file that did
    not render leaves keys out, so they come first: the model's errors would mislead.
    """
    # Salt's __pillar__ is a loader context, not a dict: ask it, whatever it is.
    getter = getattr(pillar, "get", None)
    try:
        errs = getter("_errors") if callable(getter) else None
    except Exception:  # pylint: disable=broad-except
        errs = None
    if not errs:
        return []
    errs = errs if isinstance(errs, list) else [errs]
    return [f"[cluster] pillar: did not render, fix it first: {_q(str(e), 400)}" for e in errs]


def validate(parameters=None, pillar=None):
    """
    Validate the whole cluster model and return every error at once, without touching any
    host. ``pillar`` defaults to this minion's pillar key ``kvmcluster``.

    CLI Example:

    .. code-block:: bash

        salt-call --local kvmcluster_model.validate
    """
    if pillar is None:
        render = render_errors(__pillar__)
        if render:
            __context__["retcode"] = 1
            return {"valid": False, "errors": render, "nodes": []}
    data = __pillar__.get(ROOT, {}) if pillar is None else pillar
    model, errors = build(data, _defaults(parameters))
    if errors:
        __context__["retcode"] = 1  # salt-call exits non-zero on an invalid model
    return {"valid": not errors, "errors": [str(e) for e in errors],
            "nodes": sorted(model["nodes"]) if model else []}


def load(parameters, minion_id=None, cluster=None):
    """
    Build and validate the model from this minion's pillar (or ``cluster``, the pillar's
    ``kvmcluster`` key as a runner compiled it for this node: a plain salt-ssh call has no
    pillar), keep it for the rest of the state run, and return this node's view of it.
    Raises CommandExecutionError listing every error.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_model.load '{"cluster": {...}}'
    """
    minion_id = minion_id or __grains__["id"]
    if cluster is None:
        render = render_errors(__pillar__)
        if render:
            raise CommandExecutionError("\n".join(render))
        cluster = __pillar__.get(ROOT, {})
    model, errors = build(cluster, _defaults(parameters), minion_id,
                          __grains__.get("os_family"))
    if errors:
        raise CommandExecutionError(format_errors(errors, str(minion_id), teller(cluster)))
    view = node_view(model, minion_id)
    __context__[CONTEXT_KEY] = view
    return view


def current():
    """
    This node's view of the model validated earlier in this state run.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_model.current
    """
    if CONTEXT_KEY not in __context__:
        raise CommandExecutionError("the kvmcluster model was not loaded in this run; include "
                                    "kvmcluster.model (state kvmcluster-model-validated) first")
    return __context__[CONTEXT_KEY]


# SSH options of the fleet setup: one connection per node, reused by every call of a run
# (salt-ssh makes five or six per node) and by the next run within a minute. Keepalive
# belongs in the master config (ssh_keepalive_interval): salt-ssh puts its own -o first
# and ssh keeps the first value, so a roster's ServerAliveInterval never applies.
# The sockets sit in the home directory itself: ~/.ssh may not exist (ssh creates it only
# when it writes known_hosts) and ssh cannot bind a socket there then; ssh removes each
# socket when its connection ends, and serves only its own user on it.
ROSTER_SSH_OPTIONS = ["ControlMaster=auto", "ControlPath=~/.kvmcluster-ssh-%C",
                      "ControlPersist=60"]


def roster(parameters=None, priv=None, user=None, reuse=True, path=None):
    """
    A salt-ssh roster for the nodes of the model, so the operator keeps one list: host = the
    node's address, user = the model's account (or ``user``), with sudo when that is not
    root, and ``set_path`` so that sudo finds the system tools. The model is validated first.
    With ``reuse`` (default) each entry reuses its SSH connection (ControlMaster; sockets
    ``~/.kvmcluster-ssh-*`` while a connection lasts); ``reuse=False`` leaves SSH's defaults.
    With ``path`` the roster is written there, ready for salt-ssh (mode 0600, replaced
    atomically), and the node names are returned; without it the roster is returned (under
    salt-call's ``local:`` key: not a roster file as printed).

    CLI Example:

    .. code-block:: bash

        salt-call --local kvmcluster_model.roster path=/etc/salt/roster
        salt-call --local kvmcluster_model.roster priv=/root/.ssh/kvmcluster path=/etc/salt/roster
    """
    render = render_errors(__pillar__)
    if render:
        raise CommandExecutionError("\n".join(render))
    model, errors = build(__pillar__.get(ROOT, {}), _defaults(parameters))
    if errors:
        raise CommandExecutionError(format_errors(errors))
    login = user or model["account"]["name"] or "root"
    out = {}
    for name, node in sorted(model["nodes"].items()):
        entry = {"host": node["ip"], "user": login,
                 "set_path": "/usr/sbin:/usr/bin:/sbin:/bin"}
        if login != "root":
            entry["sudo"] = True
        if priv:
            entry["priv"] = priv
        if reuse:
            entry["ssh_options"] = list(ROSTER_SSH_OPTIONS)
        out[name] = entry
    if path:
        _write_roster(path, out)
        return {"written": path, "nodes": sorted(out)}
    return out


def _write_roster(path, data):
    import os  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    import yaml  # pylint: disable=import-outside-toplevel

    if not isinstance(path, str) or not path.startswith("/"):
        raise CommandExecutionError(f"path={_q(path)}: give the roster file's absolute path")
    fd, tmp = tempfile.mkstemp(prefix=".roster-", dir=os.path.dirname(path) or "/")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# salt-ssh roster from the kvmcluster model "
                     "(kvmcluster_model.roster path=...).\n")
            yaml.safe_dump(data, fh, default_flow_style=False, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
