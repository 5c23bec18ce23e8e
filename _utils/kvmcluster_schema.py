"""
The pillar's reference: every key under ``kvmcluster``, its type, what it does and what
validation refuses. Defaults are not repeated here: they are read from the ``cluster`` block
of ``kvmcluster/parameters/defaults.yaml``, the one place the model starts from.

``docs/pillar.rst`` is generated from this table (``make docs``); the tests fail when the
page, the defaults, the model's key sets or ``pillar.example`` disagree with it.

Paths use ``:`` as Salt does; ``<id>``, ``<name>`` and ``<key>`` stand for the keys of an
open mapping (nodes, VMs, images, leases, records, sysctl keys).
"""

# (path, type, what it does, what validation refuses or "")
KEYS = [
    # ---- the cluster's network
    ("domain", "DNS name", "The cluster's DNS domain: nodes and VMs are served as "
     "``<name>.<domain>``.", "anything but a DNS name"),
    ("subnets", "list of networks", "The node networks; every node address sits in one. "
     "Export clients, leases and VM addresses are checked against them.",
     "none given; a host address with bits set; wider than /8 (IPv4) or /16 (IPv6)"),
    ("gateway", "address", "The nodes' default gateway.", "not on-link in a subnet"),
    ("gateway6", "address", "The nodes' IPv6 default gateway (with ``nodes:<id>:ip6``).",
     "not IPv6; a scope id"),
    ("dns_servers", "list of addresses", "The resolvers written into each node's "
     "configuration: the management nodes' addresses.",
     "empty on a node whose network the formula manages (unless ``dns:external``); an "
     "address that is no management node's (unless ``dns:external``)"),
    ("dns_search", "list of DNS names", "Search domains; empty means ``[domain]``.",
     "a value that is no DNS name"),
    # ---- storage
    ("storage:primary:name", "pool name", "The primary pool's libvirt name.",
     "characters outside ``[A-Za-z0-9_.+-]``; ``.`` or ``..``"),
    ("storage:primary:path", "path", "The primary pool's directory, the same on every "
     "hypervisor, on a mounted local volume.",
     "not absolute and normalized; characters outside ``[A-Za-z0-9._+@-]`` between slashes"),
    ("storage:primary:min_free_gb", "number >= 0", "The preflight fails below this much "
     "free space at the path.", "negative; not a number"),
    ("storage:secondary:enabled", "switch", "Whether there is a secondary (shared) pool.",
     "anything but true or false"),
    ("storage:secondary:type", "``nfs`` or ``external``", "``nfs``: the formula exports "
     "``export_path`` from ``server`` and mounts it on every node; ``external``: a shared "
     "filesystem the site mounts at ``mountpoint`` (checked mounted and writable).", ""),
    ("storage:secondary:server", "node id", "The NFS server (or give one node the "
     "``nfs_server`` role).", "not a node; two servers"),
    ("storage:secondary:export_path", "path", "The exported directory on the server.",
     "as ``storage:primary:path``"),
    ("storage:secondary:mountpoint", "path", "Where every node mounts the share.",
     "as ``storage:primary:path``"),
    ("storage:secondary:mount_options", "list of words", "NFS mount options (fstab). The "
     "defaults keep set-id programs, devices and programs of the share from running.",
     "spaces, commas inside one option, control characters"),
    ("storage:secondary:export_options", "list of words", "Export options "
     "(``/etc/exports.d``). Unless ``no_root_squash`` is among them, a client's root acts as "
     "the server's QEMU account on the share (``anonuid``/``anongid`` are added unless "
     "given) and the export directory is that account's, mode 0750.",
     "spaces, commas inside one option, control characters; both ``root_squash`` and "
     "``no_root_squash``; ``anonuid``/``anongid`` without a number"),
    ("storage:secondary:clients", "list of networks", "Who may mount the export; empty "
     "means the node addresses (their ``storage_ip`` with ``networks:storage``).",
     "the world; a network outside the subnets (outside ``networks:storage`` when it is "
     "set); one that covers a VM address, a lease or the DHCP range"),
    ("storage:secondary:wait_timeout", "seconds 5-3600", "How long a client's mount waits "
     "for the server's export during one apply.", "outside 5-3600"),
    ("storage:secondary:pool:name", "pool name", "The secondary pool's libvirt name.",
     "as ``storage:primary:name``"),
    ("storage:secondary:pool:type", "``netfs`` or ``dir``", "How libvirt sees the share: "
     "its own NFS mount, or a directory over the formula's mount.", ""),
    # ---- bridge, bond, network transaction
    ("bridge:name", "interface name", "The bridge that carries each node's address and its "
     "guests.", "longer than 15 characters; characters outside ``[A-Za-z0-9_.:-]``"),
    ("bridge:mtu", "576-9216 or null", "The bridge's MTU; null: the port's.",
     "outside 576-9216; above its port's MTU"),
    ("bridge:stp", "switch", "Spanning tree on the bridge.", "anything but true or false"),
    ("bridge:forward_delay", "seconds 0-30", "The bridge's forward delay.",
     "outside 0-30"),
    ("bond:name", "interface name", "The bond's name on nodes whose port is a bond.",
     "as ``bridge:name``"),
    ("bond:mode", "bond mode", "Linux bonding mode (``802.3ad`` by default).",
     "a mode Linux does not know"),
    ("bond:miimon", "ms 0-10000", "Link monitoring interval.", "outside 0-10000"),
    ("bond:updelay", "ms", "Delay before a slave that came up is used.",
     "outside 0-100000"),
    ("bond:downdelay", "ms", "Delay before a slave that went down is dropped.",
     "outside 0-100000"),
    ("bond:xmit_hash_policy", "hash policy", "Transmit hash (``layer3+4``; 0-5 accepted).",
     "a policy Linux does not know; one where the mode does not hash"),
    ("bond:lacp_rate", "``slow`` or ``fast``", "LACP rate (802.3ad only).", ""),
    ("bond:mtu", "576-9216", "The bond's MTU.", "outside 576-9216"),
    ("nic_mtu", "576-9216", "MTU of a single-NIC port.", "outside 576-9216"),
    ("network:manage", "switch", "Whether the formula owns the bridge takeover.",
     "anything but true or false"),
    ("network:backend", "backend", "``auto`` (detected on the node), ``ifupdown``, "
     "``netplan``, ``networkmanager`` or ``ifcfg``.",
     "an unknown backend; one the node's OS family does not have"),
    ("network:rollback_timeout", "seconds 30-3600", "How long an apply may take, then how "
     "long an unconfirmed change waits before the node undoes it.",
     "outside 30-3600; too short for the backend"),
    ("network:confirm", "``auto`` or ``manual``", "``auto``: the node confirms a change "
     "itself when its management peer answers over the new path.", ""),
    ("network:check:gateway", "``arp``, ``icmp`` or ``none``", "How the local check proves "
     "the gateway.", ""),
    ("network:ipv6_autoconf", "switch", "SLAAC on the bridge.",
     "anything but true or false"),
    ("network:libvirt_network", "network name or null", "A bridge-mode libvirt network on "
     "the bridge for guests.", "as ``storage:primary:name``"),
    # ---- the account
    ("account:name", "user name or null", "The management account salt-ssh logs in to "
     "after the first run.", "not a POSIX user name"),
    ("account:create", "switch", "Create the account where it is missing.",
     "anything but true or false"),
    ("account:groups", "list of groups", "Groups on hypervisors (libvirt, kvm).",
     "not group names"),
    ("account:ssh_keys", "list of public keys", "Keys in a marked block of the account's "
     "``authorized_keys``; a key removed here is removed there.",
     "an unknown type; a body that does not decode to its type; options; a comment "
     "with control characters"),
    ("account:sudo", "switch", "Password-less sudo (``/etc/sudoers.d/kvmcluster``, "
     "checked with visudo first).", "anything but true or false"),
    ("account:state", "``present`` or ``absent``", "``absent`` revokes the sudoers file "
     "and the formula's keys (the account stays).",
     "absent while migration over SSH logs in to it"),
    # ---- host tuning, packages, preflight
    ("sysctl:<key>", "value or null", "Kernel settings in "
     "``/etc/sysctl.d/60-kvmcluster.conf``; null drops a default key.",
     "a key that is no sysctl name; a value with newlines, comments or shell characters"),
    ("packages:install_recommends", "switch", "APT installs recommended packages too.",
     "anything but true or false"),
    ("packages:extra", "list of packages", "The site's own packages for every hypervisor "
     "(e.g. ``virtinst``, ``ovmf``).", "a version, an option or a path"),
    ("preflight:hardware_virtualization", "``fail`` or ``warn``", "Missing vmx/svm or "
     "``/dev/kvm`` fails the node (``warn`` for nested or lab setups only).", ""),
    ("preflight:storage_mounted", "``fail`` or ``warn``", "The primary path not on a "
     "mounted volume fails the node.", ""),
    # ---- DNS and DHCP
    ("dns:external", "switch", "The site's DNS serves the nodes (``dns_servers`` are then "
     "not checked against the management nodes).", "anything but true or false"),
    ("dns:upstream", "list of addresses", "dnsmasq's only forwarders.",
     "not addresses"),
    ("dns:records:<name>", "address", "Extra names served as ``<name>.<domain>``.",
     "a name that is not a DNS label; one a node or VM already has"),
    ("dhcp:range", "[first, last] or null", "A dynamic range on the first management node.",
     "outside a subnet; covering a node, lease or VM address"),
    ("dhcp:lease_time", "dnsmasq time", "Lease time (``12h``, ``infinite``).",
     "anything dnsmasq does not read as a time"),
    ("dhcp:hosts:<name>:mac", "MAC", "A static lease's MAC.", "not a MAC; a MAC in use"),
    ("dhcp:hosts:<name>:ip", "address", "A static lease's address.",
     "outside the subnets; an address in use"),
    # ---- firewall, migration, libvirt
    ("firewall:manage", "switch", "firewalld rules for each node's roles, where firewalld "
     "runs.", "anything but true or false"),
    ("networks:migration", "network or null", "A network apart from the guests' for live "
     "migration's stream (on an interface the site configures on each hypervisor).",
     "not a network; overlapping a cluster subnet; holding a guest address"),
    ("networks:storage", "network or null", "A network apart from the guests' for the NFS "
     "share: the server exports to and is mounted from its nodes' addresses there (on an "
     "interface the site configures on the server and each hypervisor).",
     "not a network; overlapping a cluster subnet; holding a guest address; set without the "
     "formula's NFS share"),
    ("migration:enabled", "switch", "Live migration between nodes (ports, qemu.conf, "
     "transport).", "anything but true or false"),
    ("migration:ports", "[first, last]", "QEMU's incoming migration ports, written to "
     "qemu.conf and opened to the peers.", "not 1024 <= first <= last <= 65535"),
    ("migration:transport", "``ssh`` or ``tls``", "How one node's libvirtd reaches "
     "another's; never unauthenticated TCP.", ""),
    ("migration:ssh:private_key", "OpenSSH private key (secret)", "The cluster's migration "
     "key; kept on the management node and never shown.", "not an OpenSSH private key"),
    ("migration:ssh:public_key", "public key", "Its public half, in the account's "
     "``authorized_keys`` with a forced command.", "as ``account:ssh_keys``"),
    ("migration:plaintext", "switch", "QEMU's migration stream (guests' memory, copied "
     "disks) in clear instead of TLS with the cluster's certificates; only on a network no "
     "guest or other tenant reaches.", "anything but true or false"),
    ("migration:certificates:valid_hours", "hours", "How long a node's migration "
     "certificate is valid when issued.", "outside 1-87600"),
    ("migration:certificates:renew_hours", "hours", "A certificate with fewer hours left is "
     "issued again by the next ``certificates`` or ``migrate`` run; status warns.",
     "outside 0-8760; at or above ``valid_hours``"),
    ("libvirt_python:version", "version or null", "libvirt-python for minions with a Python "
     "of their own; null: the node's libvirt version.", "not a quoted version like '9.0.0'"),
    ("libvirt_python:index_url", "URL or null", "A package index instead of PyPI.",
     "not an http(s):// or file:// URL"),
    ("libvirt_python:find_links", "URL or null", "A find-links location.",
     "not an http(s):// or file:// URL"),
    ("libvirt:apparmor_pool_access", "switch", "A pool-wide AppArmor rule for every guest "
     "(one compromised guest then reaches every disk).", "anything but true or false"),
    ("libvirt:unix_sock_group", "group", "The libvirt sockets' group.", "not a group name"),
    ("libvirt:unix_sock_ro_perms", "mode (quoted)", "The read-only socket's mode.",
     "not an octal mode"),
    ("libvirt:unix_sock_rw_perms", "mode (quoted)", "The read-write socket's mode.",
     "not an octal mode; any access for others"),
    ("libvirt:tls:enabled", "switch", "libvirt's TLS listener (only when the files exist).",
     "anything but true or false"),
    ("libvirt:tls:cert_file", "path", "The server certificate.", "as a path"),
    ("libvirt:tls:key_file", "path", "The server key.", "as a path"),
    ("libvirt:tls:ca_file", "path", "The CA certificate.", "as a path"),
    # ---- images and VMs
    ("images:<name>:volume", "volume name", "A golden image: a volume of the secondary "
     "pool.", "as ``storage:primary:name``; both volume and path"),
    ("images:<name>:path", "path", "A golden image: a file below the secondary mountpoint.",
     "outside the mountpoint"),
    ("images:<name>:format", "``raw`` or ``qcow2``", "The image's format.", ""),
    ("images:<name>:kernel", "path", "Direct kernel boot: the kernel, on the shared "
     "storage.", "outside the secondary mountpoint"),
    ("images:<name>:initrd", "path", "Direct kernel boot: the initrd, on the shared "
     "storage.", "outside the secondary mountpoint"),
    ("images:<name>:cmdline", "text", "Direct kernel boot: the kernel command line.",
     "non-printable characters; over 1024 characters"),
    ("vms:<name>:node", "node id", "The hypervisor the VM lives on.",
     "not a node; a management-only node"),
    ("vms:<name>:image", "image name", "Its golden image.", "not an image of ``images``"),
    ("vms:<name>:ip", "address", "A static DHCP lease and ``<vm>.<domain>``.",
     "outside the subnets; an address in use"),
    ("vms:<name>:mac", "MAC", "Its NIC's MAC (default: derived from ``vm:mac_seed`` and "
     "the name).", "not a MAC; a MAC in use"),
    ("vms:<name>:disks", "list of {size_gb}", "Extra empty disks.",
     "more than 16; sizes outside 1-65536"),
    ("vms:<name>:vcpus", "1-512", "As ``vm:vcpus``, for this VM.", "outside 1-512"),
    ("vms:<name>:memory_mb", "MiB", "As ``vm:memory_mb``.", "below 32"),
    ("vms:<name>:disk_gb", "GiB", "As ``vm:disk_gb``.", "outside 1-65536"),
    ("vms:<name>:clone", "``full`` or ``linked``", "As ``vm:clone``.", ""),
    ("vms:<name>:storage", "``primary`` or ``secondary``", "As ``vm:storage``.", ""),
    ("vms:<name>:autostart", "switch", "As ``vm:autostart``.", "anything but true or false"),
    ("vms:<name>:state", "``running``, ``stopped`` or ``absent``", "As ``vm:state``.", ""),
    ("vm:vcpus", "1-512", "Default vCPUs (checked on each VM).", "outside 1-512"),
    ("vm:memory_mb", "MiB", "Default memory.", "below 32"),
    ("vm:disk_gb", "GiB", "Default system disk size (grown from the image, never shrunk).",
     "outside 1-65536"),
    ("vm:clone", "``full`` or ``linked``", "``full``: a copy of the golden image in the "
     "primary pool; ``linked``: a qcow2 overlay on it.", ""),
    ("vm:storage", "``primary`` or ``secondary``", "Where a VM's disks live: the node's "
     "pool (copied on migration) or the shared storage.", ""),
    ("vm:autostart", "switch", "Start with the node.", "anything but true or false"),
    ("vm:state", "``running``, ``stopped`` or ``absent``", "``stopped``: ACPI shutdown, "
     "then power-off; ``absent``: undefined and its own volumes deleted.", ""),
    ("vm:domain_type", "``kvm`` or ``qemu``", "``qemu`` (emulation) only without hardware "
     "virtualization.", ""),
    ("vm:shutdown_timeout", "seconds 5-3600", "How long an ACPI shutdown may take.",
     "outside 5-3600"),
    ("vm:memory_reserve_mb", "MiB", "A node commits at most its memory minus this.",
     "negative"),
    ("vm:vcpu_ratio", "number, 0-64", "A node commits at most its CPUs times this.",
     "0 or less; over 64"),
    ("vm:antispoof", "switch", "Each guest's NIC behind libvirt's clean-traffic filter: no "
     "MAC, IP or ARP spoofing, no other layer-2 protocol (IPv4 and ARP only), no DHCP "
     "server; bound to its MAC and ``ip``, or to the address the management nodes' DHCP "
     "gave it. Off only for a guest that must route or bridge.", "anything but true or false"),
    ("vms:<name>:antispoof", "switch", "As ``vm:antispoof``.", "anything but true or false"),
    ("vm:mac_seed", "text or null", "Seed of derived MACs; null: the domain.",
     "not a string"),
    # ---- nodes
    ("nodes:<id>:ip", "address/prefix", "The node's address (required), carried by the "
     "bridge.", "outside the subnets; in use; a network or broadcast address"),
    ("nodes:<id>:ip6", "address/prefix", "A static IPv6 address on the bridge.",
     "a scope id; in use"),
    ("nodes:<id>:migration_ip", "address", "The node's address on ``networks:migration`` "
     "(an interface the site configures): migrations to it arrive there only.",
     "without ``networks:migration``; missing on a hypervisor when it is set; outside it; "
     "another node's"),
    ("nodes:<id>:storage_ip", "address", "The node's address on ``networks:storage`` (an "
     "interface the site configures): the share is served and mounted there only.",
     "without ``networks:storage``; missing on the NFS server or a hypervisor when it is "
     "set; on a node that does not use the share; outside it; another node's"),
    ("nodes:<id>:gateway", "address", "Overrides ``gateway``.", "not on-link"),
    ("nodes:<id>:gateway6", "address", "Overrides ``gateway6``.", "not IPv6"),
    ("nodes:<id>:dns_servers", "list of addresses", "Overrides ``dns_servers``.",
     "as ``dns_servers``"),
    ("nodes:<id>:dns_search", "list of DNS names", "Overrides ``dns_search``.", ""),
    ("nodes:<id>:hostname", "host name", "The node's host name (default: its id).",
     "not a DNS label"),
    ("nodes:<id>:nic", "interface name", "The bridge's port: one NIC.",
     "with ``bond`` too; as ``bridge:name``"),
    ("nodes:<id>:mac", "MAC", "The port's MAC, when it must be pinned.",
     "not a MAC; in use"),
    ("nodes:<id>:mtu", "576-9216", "A NIC port's MTU.", "outside 576-9216"),
    ("nodes:<id>:bond:slaves", "list of NICs", "The bridge's port: a bond of these NICs.",
     "fewer than one; a NIC twice"),
    ("nodes:<id>:bond:<key>", "as ``bond:<key>``", "Any bond default, for this node.",
     "as the defaults"),
    ("nodes:<id>:bridge:<key>", "as ``bridge:<key>``", "Any bridge key, for this node.",
     "as the defaults"),
    ("nodes:<id>:backend", "backend", "Overrides ``network:backend``.",
     "as ``network:backend``"),
    ("nodes:<id>:roles", "list", "``management`` (DNS, DHCP; no hypervisor unless "
     "``hypervisor`` too), ``nfs_server``, ``hypervisor``.", "an unknown role"),
    ("nodes:<id>:os_family", "``Debian`` or ``RedHat``", "Lets validation check the "
     "backend before the node is reached.", ""),
    ("nodes:<id>:ssh_host_keys", "list of public keys", "The node's SSH host keys, checked "
     "by migration over SSH (``salt-run kvmcluster.host_keys``).",
     "as ``account:ssh_keys``"),
    ("lookup", "mapping", "Overrides of the formula's internals (``parameters/``: "
     "packages, units, paths).", "values that are not words or paths"),
]

# Keys whose value is a mapping the site fills (its keys are names, not schema).
OPEN = ("nodes", "vms", "images", "sysctl", "dns:records", "dhcp:hosts", "lookup")

SECTIONS = [
    ("The cluster's network", ("domain", "subnets", "gateway", "gateway6", "dns_servers",
                               "dns_search")),
    ("Storage", ("storage",)),
    ("Bridge, bond and the network transaction", ("bridge", "bond", "nic_mtu", "network")),
    ("The management account", ("account",)),
    ("Host settings, packages and preflight", ("sysctl", "packages", "preflight")),
    ("DNS and DHCP", ("dns", "dhcp")),
    ("Firewall, networks, migration and libvirt", ("firewall", "networks", "migration",
                                                   "libvirt_python", "libvirt")),
    ("Golden images and VMs", ("images", "vms", "vm")),
    ("Nodes", ("nodes",)),
    ("Formula internals", ("lookup",)),
]


def default_of(defaults, path):
    """The default of ``path`` from the defaults' cluster block, or the string "-"."""
    node = defaults
    for part in path.split(":"):
        if part.startswith("<"):
            return "-"
        if not isinstance(node, dict) or part not in node:
            return "-"
        node = node[part]
    if isinstance(node, dict) and node:
        return "-"
    return node


def _literal(value):
    if value == "-":
        return "none"
    if value is None:
        return "``null``"
    if isinstance(value, bool):
        return f"``{str(value).lower()}``"
    if isinstance(value, list):
        return "``[" + ", ".join(str(v) for v in value) + "]``" if value else "``[]``"
    if isinstance(value, dict):
        return "``{}``"
    if value == "":
        return "``''``"
    return f"``{value}``"


def render_rst(defaults):
    """docs/pillar.rst from KEYS and the defaults' cluster block."""
    out = [
        ".. Generated from _utils/kvmcluster_schema.py and kvmcluster/parameters/"
        "defaults.yaml",
        "   by `make docs`; a test fails when this page is out of date. Do not edit.",
        "",
        "Pillar reference",
        "================",
        "",
        "Every key lives under ``kvmcluster``. Defaults come from the ``cluster`` block of",
        "``kvmcluster/parameters/defaults.yaml``; ``pillar.example`` shows every key, and",
        "``pillar.minimal.example`` the least a cluster needs. Unknown keys are errors, with",
        "the nearest valid key suggested. Every refusal names the node and the key, and",
        "happens before any host is touched (``docs/security.rst`` lists what is refused",
        "for safety).",
        "",
    ]
    placed = set()
    for title, prefixes in SECTIONS:
        out += [title, "-" * len(title), ""]
        for path, kind, what, refused in KEYS:
            top = path.split(":")[0]
            if top not in prefixes or path in placed:
                continue
            placed.add(path)
            out.append(f"``{path}``")
            out.append(f"    *{kind}*; default {_literal(default_of(defaults, path))}.")
            out.append(f"    {what}")
            if refused:
                out.append(f"    Refused: {refused}.")
            out.append("")
    missing = [k[0] for k in KEYS if k[0] not in placed]
    if missing:
        raise ValueError(f"keys in no section: {missing}")
    return "\n".join(out).rstrip() + "\n"


def documented_paths():
    return [k[0] for k in KEYS]
