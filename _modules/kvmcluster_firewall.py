"""
firewalld for a kvmcluster node: which ports its roles need, from which addresses, as
rich rules in the zone of the interface that carries the node's address.

Rules the formula added are recorded in OWNED, so a rule that the model no longer wants is
removed and a rule the site added by hand is never touched.
"""
import ipaddress
import json
import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_firewall"

OWNED = "/var/lib/kvmcluster/firewall-rules.json"
# firewalld's own service definitions (what each opens).
NFS_SERVICES = ["nfs", "rpc-bind", "mountd"]
TLS_SERVICE = "libvirt-tls"


def __virtual__():
    return __virtualname__


def _cmd(*args, check=True):
    res = __salt__["cmd.run_all"](["firewall-cmd", *args], python_shell=False,
                                  ignore_retcode=True)
    if check and res["retcode"] != 0:
        raise CommandExecutionError(f"firewall-cmd {' '.join(args)} failed: "
                                    f"{(res['stderr'] or res['stdout']).strip()}")
    return res


def running():
    """
    True when firewalld runs on this node.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.running
    """
    if not __salt__["cmd.has_exec"]("firewall-cmd"):
        return False
    return _cmd("--state", check=False)["stdout"].strip() == "running"


def zone_of(interface):
    """
    The firewalld zone ``interface`` is in, or the default zone when it is in none.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.zone_of br0
    """
    res = _cmd(f"--get-zone-of-interface={interface}", check=False)
    if res["retcode"] == 0 and res["stdout"].strip():
        return res["stdout"].strip()
    return _cmd("--get-default-zone")["stdout"].strip()


def rich_rules(zone, permanent=False):
    """
    The rich rules of ``zone`` (runtime, or the permanent configuration).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.rich_rules public permanent=True
    """
    args = (["--permanent"] if permanent else []) + [f"--zone={zone}", "--list-rich-rules"]
    return [ln.strip() for ln in _cmd(*args)["stdout"].splitlines() if ln.strip()]


def rule(source, service=None, port=None):
    """
    A rich rule in firewalld's own spelling (as ``--list-rich-rules`` prints it), so what is
    wanted and what is listed compare as strings.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.rule 172.30.10.12 service=nfs
    """
    net = ipaddress.ip_network(str(source), strict=False)
    family = "ipv4" if net.version == 4 else "ipv6"
    host = net.prefixlen == net.max_prefixlen
    addr = str(net.network_address) if host else str(net)
    what = f'service name="{service}"' if service else f'port port="{port}" protocol="tcp"'
    return f'rule family="{family}" source address="{addr}" {what} accept'


def wanted(view):
    """
    The rich rules this node's roles need: NFS for the export's clients on the NFS server;
    libvirt TLS and the migration ports for the other nodes of the cluster.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.wanted "$(salt-call --out=json kvmcluster_model.current)"
    """
    me = view["self"]["name"]
    rules = []
    sec = view["storage"]["secondary"]
    if sec.get("enabled") and sec.get("server") == me and sec.get("type", "nfs") == "nfs":
        for client in sec["clients"]:
            rules += [rule(client, service=s) for s in NFS_SERVICES]
    peers = []
    for name, node in sorted(view["nodes"].items()):
        # Every node but a management-only one runs guests.
        if name != me and node.get("hypervisor", True):
            peers += [a for a in (node.get("ip"), node.get("ip6")) if a]
    if not view["self"].get("hypervisor", True):
        peers = []  # a management-only node neither migrates nor serves libvirt
    if view["libvirt"]["tls"]["enabled"]:
        rules += [rule(p, service=TLS_SERVICE) for p in peers]
    if view["self"].get("management"):
        # DNS for the cluster's subnets; DHCP from anywhere on the link (a client has no
        # address yet when it asks).
        rules += [rule(net, service="dns") for net in view["subnets"]]
        fams = sorted({"ipv4" if ":" not in n else "ipv6" for n in view["subnets"]})
        if "ipv4" in fams:
            rules.append('rule family="ipv4" service name="dhcp" accept')
    mig = view.get("migration") or {}
    if mig.get("enabled"):
        ports = f"{mig['ports'][0]}-{mig['ports'][1]}"
        # With a migration network the stream comes from the peers' addresses there only.
        movers = [n.get("migration_ip") for name, n in sorted(view["nodes"].items())
                  if name != me and n.get("hypervisor", True) and n.get("migration_ip")]
        rules += [rule(p, port=ports) for p in (movers if movers and peers else peers)]
    return list(dict.fromkeys(rules))


def owned():
    """
    ``{zone: [rules]}`` the formula added on this node.

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.owned
    """
    try:
        with open(OWNED, encoding="utf-8") as fh:
            data = json.load(fh)
        return {str(k): [str(r) for r in v] for k, v in data.items() if isinstance(v, list)}
    except (OSError, ValueError, AttributeError):
        return {}


def set_owned(data):
    """
    Record the rules the formula owns (``{zone: [rules]}``).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.set_owned '{"public": []}'
    """
    os.makedirs(os.path.dirname(OWNED), mode=0o700, exist_ok=True)
    tmp = OWNED + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, OWNED)


def change(zone, add=(), remove=()):
    """
    Add and remove rich rules in ``zone``, at runtime and permanently; no reload (a reload
    would re-apply every rule of every zone).

    CLI Example:

    .. code-block:: bash

        salt '*' kvmcluster_firewall.change public add='["rule family=..."]'
    """
    for scope in ([], ["--permanent"]):
        have = set(rich_rules(zone, permanent=bool(scope)))
        for r in add:
            if r not in have:
                _cmd(*scope, f"--zone={zone}", f"--add-rich-rule={r}")
        for r in remove:
            if r in have:
                _cmd(*scope, f"--zone={zone}", f"--remove-rich-rule={r}")
