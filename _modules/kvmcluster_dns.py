"""
The cluster's DNS and DHCP on the management node(s), served by dnsmasq from the model.

Three files, all the formula's own (dnsmasq.conf is never rewritten):

- ``/etc/dnsmasq.d/kvmcluster.conf``: where and how to serve (the management node's
  addresses only, the domain, upstream resolvers, DHCP ranges and options). A change here
  restarts dnsmasq.
- ``/etc/kvmcluster/dnsmasq/hosts`` (addn-hosts): every node, record and lease name, A/AAAA
  and PTR.
- ``/etc/kvmcluster/dnsmasq/dhcp-hosts`` (dhcp-hostsfile): the static leases by MAC.

dnsmasq re-reads the last two on SIGHUP, so records and leases change without a restart
and without a gap in DNS.
"""
import ipaddress
import os
import tempfile

from salt.exceptions import CommandExecutionError

__virtualname__ = "kvmcluster_dns"

CONF = "/etc/dnsmasq.d/kvmcluster.conf"
DATA_DIR = "/etc/kvmcluster/dnsmasq"
HOSTS = f"{DATA_DIR}/hosts"
DHCP_HOSTS = f"{DATA_DIR}/dhcp-hosts"
HEADER = "# Managed by kvmcluster (pillar kvmcluster:dns, kvmcluster:dhcp). Edits are replaced."


def __virtual__():
    return __virtualname__


def addresses(node):
    """
    A node's model addresses (IPv4, then its static IPv6 ones): where dnsmasq listens.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.addresses '{"ip": "172.30.10.12", "address6": []}'
    """
    return [a for a in [node.get("ip"), *[x.split("/")[0] for x in node.get("address6") or []]]
            if a]


def files():
    """
    The formula's own dnsmasq files: ``conf`` (the drop-in), ``hosts``, ``leases``.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.files
    """
    return {"conf": CONF, "hosts": HOSTS, "leases": DHCP_HOSTS}


def management_nodes(view):
    """
    The management nodes of the model, sorted by name.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.management_nodes "$(salt-call --out=json kvmcluster_model.current)"
    """
    return [n for _, n in sorted(view["nodes"].items()) if n.get("management")]


def _check_values(view):
    """Every value the three files take from the model, in dnsmasq's grammar (no separator,
    no newline): a refusal writes nothing."""
    vms = {n: {k: vm.get(k) for k in ("ip", "mac")} for n, vm in (view.get("vms") or {}).items()}
    __utils__["kvmcluster_safe.check"]("dnsmasq configuration", "dnsmasq", {
        "domain": view.get("domain") or "",
        "nodes": {n: [e.get("hostname"), *addresses(e)] for n, e in view["nodes"].items()},
        "dns:records": view["dns"].get("records") or {},
        "dns:upstream": view["dns"].get("upstream") or [],
        "dhcp:hosts": view["dhcp"].get("hosts") or {},
        "dhcp:range": view["dhcp"].get("range") or [],
        "dhcp:lease_time": view["dhcp"].get("lease_time") or "",
        "gateway": view.get("gateway") or "",
        "vms": vms})


def check_conf(text, binary="/usr/sbin/dnsmasq"):
    """
    ``dnsmasq --test`` of a new drop-in before it is installed (where dnsmasq is installed;
    on a first install the model and the writer's checks stand alone). Raises
    CommandExecutionError with dnsmasq's words when it refuses the file.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.check_conf "$(cat /etc/dnsmasq.d/kvmcluster.conf)"
    """
    if not os.path.exists(binary):
        return False
    fd, tmp = tempfile.mkstemp(prefix="kvmcluster-dnsmasq-", suffix=".conf")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        res = __salt__["cmd.run_all"]([binary, "--test", f"--conf-file={tmp}"],
                                      python_shell=False, ignore_retcode=True)
    finally:
        os.unlink(tmp)
    if res["retcode"] != 0:
        raise CommandExecutionError("dnsmasq refuses the new configuration, which is not "
                                    f"installed: {(res['stderr'] or res['stdout']).strip()[:300]}")
    return True


def _fqdn(name, domain):
    return f"{name}.{domain}" if domain else name


def hosts_lines(view):
    """
    The addn-hosts lines: ``<address> <fqdn> <name>`` for every node, record, lease and VM.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.hosts_lines "$(salt-call --out=json kvmcluster_model.current)"
    """
    domain = view.get("domain") or ""
    rows = []
    _check_values(view)
    for _, n in sorted(view["nodes"].items()):
        for a in addresses(n):
            rows.append((a, n["hostname"]))
    for name, addr in sorted((view["dns"].get("records") or {}).items()):
        rows.append((str(addr), name))
    for name, h in sorted((view["dhcp"].get("hosts") or {}).items()):
        rows.append((str(h["ip"]), name))
    for name, vm in _vms(view):
        if vm.get("ip"):
            rows.append((vm["ip"], name))
    return [f"{a} {_fqdn(name, domain)} {name}" for a, name in rows]


def _vms(view):
    """The model's VMs that exist (state running or stopped), by name."""
    return [(n, vm) for n, vm in sorted((view.get("vms") or {}).items())
            if vm.get("state") != "absent"]


def dhcp_host_lines(view):
    """
    The dhcp-hostsfile lines: ``<mac>,<ip>,<name>`` per static lease and VM (``<mac>,<name>``
    for a VM without an address).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.dhcp_host_lines "$(salt-call --out=json kvmcluster_model.current)"
    """
    out = []
    _check_values(view)
    for name, h in sorted((view["dhcp"].get("hosts") or {}).items()):
        ip = ipaddress.ip_address(str(h["ip"]))
        out.append(f"{h['mac'].lower()},{f'[{ip}]' if ip.version == 6 else ip},{name}")
    # A VM without an address still gets its name: dnsmasq gives it one from the range and
    # answers for <vm>.<domain> with it.
    for name, vm in _vms(view):
        if vm.get("ip"):
            ip = ipaddress.ip_address(vm["ip"])
            out.append(f"{vm['mac']},{f'[{ip}]' if ip.version == 6 else ip},{name}")
        else:
            out.append(f"{vm['mac']},{name}")
    return out


def conf_text(view):
    """
    The drop-in for this management node.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.conf_text "$(salt-call --out=json kvmcluster_model.current)"
    """
    me = view["self"]
    mgmt = management_nodes(view)
    domain = view.get("domain") or ""
    dhcp = view["dhcp"]
    _check_values(view)
    lines = [HEADER,
             "# Only the management node's own addresses, never the wildcard.",
             "bind-interfaces", *[f"listen-address={a}" for a in addresses(me)],
             "# Answers come from the model, not this node's /etc/hosts or resolv.conf.",
             "no-hosts", "no-resolv", "domain-needed", "bogus-priv",
             f"addn-hosts={HOSTS}",
             "# Names come from the model only: a name a DHCP client asks for never enters",
             "# the cluster's zone (it could claim a node's or another guest's name).",
             "dhcp-ignore-names"]
    if domain:
        lines += [f"domain={domain}", f"local=/{domain}/"]
    lines += [f"server={u}" for u in view["dns"].get("upstream") or []]
    lines += [f"dhcp-hostsfile={DHCP_HOSTS}"]
    lease = dhcp.get("lease_time") or "12h"
    rng = dhcp.get("range")
    for net in (ipaddress.ip_network(s) for s in view["subnets"]):
        if net.version != 4:
            continue
        if rng and ipaddress.ip_address(str(rng[0])) in net and mgmt and \
                mgmt[0]["name"] == me["name"]:
            # The dynamic range on the first management node only: two servers handing
            # out the same pool would lease one address twice.
            lines.append(f"dhcp-range={rng[0]},{rng[1]},{net.netmask},{lease}")
        lines.append(f"dhcp-range={net.network_address},static,{net.netmask},{lease}")
    if view.get("gateway"):
        lines.append(f"dhcp-option=option:router,{view['gateway']}")
    dns4 = [a for n in mgmt for a in addresses(n) if ":" not in a]
    if dns4:
        lines.append(f"dhcp-option=option:dns-server,{','.join(dns4)}")
    if domain:
        lines.append(f"dhcp-option=option:domain-search,{domain}")
    return "\n".join(lines) + "\n"


def listening(port=53):
    """
    The local addresses a process listens on at ``port`` (TCP and UDP), from ``ss``.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.listening
    """
    res = __salt__["cmd.run_all"](["ss", "-H", "-l", "-n", "-t", "-u", f"sport = :{port}"],
                                  python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        raise CommandExecutionError(f"ss failed: {res['stderr'].strip()}")
    out = set()
    for line in res["stdout"].splitlines():
        f = line.split()
        if len(f) >= 5:
            local = f[4]
            addr = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
            out.add(addr)
    return sorted(out)


def reload(service):
    """
    SIGHUP to the service's main process: dnsmasq re-reads its hosts files, keeping its PID
    and its cache of everything else.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.reload dnsmasq.service
    """
    __salt__["kvmcluster_node.systemctl"]("kill", "--kill-whom=main", "--signal=HUP", service)
    return True


def main_pid(service):
    """
    The service's main PID (0 when it does not run).

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.main_pid dnsmasq.service
    """
    res = __salt__["kvmcluster_node.systemctl"]("show", "-p", "MainPID", "--value", service,
                                                check=False)
    try:
        return int(res["stdout"].strip() or 0)
    except ValueError:
        return 0


def ensure_dir():
    """The formula's dnsmasq data directory.

    CLI Example:

    .. code-block:: bash

        salt-call kvmcluster_dns.ensure_dir
    """
    os.makedirs(DATA_DIR, mode=0o755, exist_ok=True)
    os.makedirs(os.path.dirname(CONF), mode=0o755, exist_ok=True)
    return DATA_DIR
