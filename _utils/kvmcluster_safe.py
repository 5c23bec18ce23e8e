"""
The second line of defence at every writer, from ``__utils__["kvmcluster_safe.check"]``.

The model refuses hostile pillar values first (canonical addresses, safe paths, parsed keys);
each writer still checks the values it puts into its file before it renders: a value with a
control character (newlines, U+2028, NEL, VT, NUL ...) or one of the writer's own
metacharacters is refused, and nothing is written. Pure code: no Salt, no host.

Each writer names its grammar (``SPEC``): which characters a value may hold there.
"""
import copy
import re
import unicodedata

# The characters a value may hold in each file's grammar. Whitespace, quotes, comment signs
# and the file's separators are never among them.
SPEC = {
    # ifupdown stanzas, NetworkManager keyfiles, netplan, ifcfg (then shell-quoted),
    # resolv.conf: interface names, addresses, prefixes, MACs, bond options, domains.
    "network": "A-Za-z0-9._:/@+=-",
    # dnsmasq's drop-in, addn-hosts and dhcp-hostsfile: names, addresses, MACs, lease times.
    "dnsmasq": "A-Za-z0-9._:-",
    # /etc/exports and /etc/fstab: paths, addresses/prefixes, options (one per value).
    "exports": "A-Za-z0-9._:/@+=-",
    "fstab": "A-Za-z0-9._:/@+=-",
    # sudoers: a user name.
    "sudoers": "a-z0-9_-",
    # authorized_keys: one line of printable ASCII per key (options quoted by the writer).
    "authorized_keys": "\x20-\x7e",
    # known_hosts and ssh_config: host names, addresses, a key's type and its body (each a
    # word of its own: a space inside one would add a field).
    "known_hosts": "A-Za-z0-9+/=.:@_-",
    # An AppArmor rule's quoted path; an SELinux fcontext spec (a regex: '.' and '+' escaped
    # by the writer); paths in libvirtd.conf, qemu.conf, unit files. Absolute.
    "path": "A-Za-z0-9._+@/-",
    # sysctl.d: a key and a value of words and numbers on one line.
    "sysctl": "A-Za-z0-9_.:/,+@= -",
    "sysctl_key": "A-Za-z0-9_./-",
    # A quoted value of libvirtd.conf or qemu.conf: no quote, no backslash.
    "libvirt_conf": "A-Za-z0-9._:/@+=-",
    # Text and attributes of a libvirt domain XML (ElementTree escapes <>&"): printable.
    "xml": "^\x00-\x1f\x7f",
}
_ALLOWED = {k: re.compile(f"[{v}]", 0 if k == "xml" else re.A) for k, v in SPEC.items()}
# Never, in any grammar: control and format characters, line and paragraph separators.
_NEVER = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


class Unsafe(ValueError):
    """A value a writer will not write."""


def _name(ch):
    try:
        return f"{unicodedata.name(ch)} (U+{ord(ch):04X})"
    except ValueError:
        return f"U+{ord(ch):04X}"


def _first_bad(text, spec):
    for ch in text:
        if unicodedata.category(ch) in _NEVER or not _ALLOWED[spec].match(ch):
            return ch
    return None


def _leaves(value, label):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(k, f"{label} key")
            yield from _leaves(v, f"{label}:{k}")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{label}:{i}")
    elif isinstance(value, str):
        yield label, value


def check(writer, spec, values):
    """
    Refuse (raise ``Unsafe``) when a string in ``values`` (a mapping of label -> value,
    nested lists and mappings walked) holds a character ``spec``'s grammar does not allow.
    ``writer`` names the file for the message. Returns nothing.
    """
    if spec not in SPEC:
        raise Unsafe(f"{writer}: unknown grammar {spec!r}")
    leaves = (leaf for top, value in values.items() for leaf in _leaves(value, str(top)))
    for label, text in leaves:
        bad = _first_bad(text, spec)
        if bad is not None:
            raise Unsafe(f"{writer}: {label} {text[:60]!r} holds {_name(bad)}, which this "
                         "file's grammar does not allow; refused, nothing written")
        if spec == "path" and not text.startswith("/"):
            raise Unsafe(f"{writer}: {label} {text[:60]!r} is not an absolute path; refused, "
                         "nothing written")


def fcontext_spec(path):
    """The SELinux fcontext regex for everything at and below ``path`` (checked; the
    regex characters a safe path may hold escaped)."""
    check("SELinux fcontext", "path", {"path": path})
    return re.sub(r"([.+])", r"\\\1", path.rstrip("/")) + "(/.*)?"


# ---- secrets --------------------------------------------------------------------------
# Pillar keys (under ``kvmcluster``) whose values are secrets, the schema's secret marks
# (kvmcluster_model.SECRETS, kept equal by a test): never an argument of a call to a node,
# never in a message, a state's changes or a log line.
SECRETS = (("migration", "ssh", "private_key"),)
# What a node's model holds in place of a secret the management node keeps to itself.
WITHHELD = "withheld (a secret stays on the management node)"


def withhold(cluster):
    """A copy of ``cluster`` (a ``kvmcluster`` pillar) with every secret replaced by
    ``WITHHELD``: what a runner may send a node. The original is not changed."""
    out = copy.deepcopy(cluster) if isinstance(cluster, dict) else cluster
    for path in SECRETS:
        cur = out
        for k in path[:-1]:
            cur = cur.get(k) if isinstance(cur, dict) else None
        if isinstance(cur, dict) and cur.get(path[-1]) is not None:
            cur[path[-1]] = WITHHELD
    return out
