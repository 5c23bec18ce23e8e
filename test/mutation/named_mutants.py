"""Hand-made mutations of the safety-critical code (the network transaction engine, the
firewall, the MAC policy, the libvirt binding), each applied to a copy of the tree; the fast
tests must fail on every one (run: make mutation; commits of HEAD only)."""
import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
SRC = pathlib.Path(__file__).resolve().parents[2]
ENGINE = ("_modules/kvmcluster_nettxn.py", "test/unit/test_nettxn_engine.py")
HARDENING = "test/unit/test_hardening_states.py"
MANAGEMENT = "test/unit/test_management_states.py"
NETTXN = {
    "_restore does nothing": ("def _restore(txn, spec):\n", "def _restore(txn, spec):\n    return\n"),
    "confirm leaves the timer armed": ("        _stop_timers(t)\n        t.set_phase(\"confirmed\", \"confirmed by the management node\"",
                                       "        t.set_phase(\"confirmed\", \"confirmed by the management node\""),
    "check passes when the bridge lacks the address": ("        if lacking:\n            reason", "        if False:\n            reason"),
    "restore keeps the new files": ("    _write_files(spec, \"old\")\n    if b == \"networkmanager\":", "    if b == \"networkmanager\":"),
    "rollback forgets the default route": ("            if r.get(\"gateway\") and r.get(\"dev\") in present:\n                _run([\"ip\", fam, \"route\", \"replace\", \"default\"",
                                           "            if False:\n                _run([\"ip\", fam, \"route\", \"replace\", \"default\""),
    "boot-time rollback skips a pending transaction": ("        if ph in FINAL:\n            continue\n        with t.lock():",
                                                       "        if True:\n            continue\n        with t.lock():"),
}
NETTXN["rollback leaves a second copy of a route"] = (
    "    for attempt in range(2):\n", "    for attempt in range(0):\n")
MUTS = {name: (*ENGINE, old, new) for name, (old, new) in NETTXN.items()}
MUTS.update({
    "NFS opened to every address": (
        "_modules/kvmcluster_firewall.py", HARDENING,
        "        for client in sec[\"clients\"]:", "        for client in [\"0.0.0.0/0\"]:"),
    "stale-rule removal takes the site's rules too": (
        "_states/kvmcluster_firewall.py", HARDENING,
        "        stale = sorted(mine - set(want))",
        "        stale = sorted(set(__salt__[\"kvmcluster_firewall.rich_rules\"](zone, True))"
        " - set(want))"),
    "firewall rules only until the next reload": (
        "_modules/kvmcluster_firewall.py", HARDENING,
        "    for scope in ([], [\"--permanent\"]):", "    for scope in ([],):"),
    "global AppArmor rule by default": (
        "_states/kvmcluster_security.py", HARDENING,
        "_block(_pool_paths(view)) if broad else None)", "_block(_pool_paths(view)))"),
    "restorecon only when the rule is new": (
        "_states/kvmcluster_security.py", HARDENING,
        "            elif _relabel_needed(p):", "            elif False:"),
    "pip into the system's Python": (
        "_states/kvmcluster_libvirt.py", HARDENING,
        "    return None  # the system's Python",
        "    return [sys.executable, \"-m\", \"pip\", \"install\"]  # the system's Python"),
    "sudoers installed without the visudo check": (
        "_states/kvmcluster_account.py", MANAGEMENT,
        "        if not ok:\n            raise _skeleton().Refused(f\"visudo refuses",
        "        if False:\n            raise _skeleton().Refused(f\"visudo refuses"),
    "a key removed from pillar stays": (
        "_states/kvmcluster_account.py", MANAGEMENT,
        "        del lines[start:end + 1]\n", "        pass\n"),
    "the site's own keys are dropped": (
        "_states/kvmcluster_account.py", MANAGEMENT,
        "    lines = [ln for ln in lines if _key_id(ln) not in ours",
        "    lines = [ln for ln in [] if _key_id(ln) not in ours"),
    "dnsmasq on the wildcard": (
        "_modules/kvmcluster_dns.py", MANAGEMENT,
        "             \"bind-interfaces\", *[f\"listen-address={a}\" for a in addresses(me)],",
        "             \"bind-interfaces\","),
    "a record change restarts dnsmasq": (
        "_states/kvmcluster_dns.py", MANAGEMENT,
        "        if \"service\" in changes or paths[\"conf\"] in changes:",
        "        if True:"),
})
VM = ("_modules/kvmcluster_vm.py", "test/unit/test_vm_module.py")
MUTS.update({
    "a VM without the formula's metadata is removed": (
        *VM, "        if not info[\"owned\"]:\n            raise", "        if False:\n            raise"),
    "a volume another domain uses is deleted": (
        *VM, "            elif path in used:", "            elif False:"),
    "a golden image is deleted": (
        *VM, "            elif os.path.realpath(path) in protected:", "            elif False:"),
    "a volume of another pool is deleted": (
        *VM, "            elif in_pool != pool or v.get(\"pool\") != pool:", "            elif False:"),
})
MIG = ("_modules/kvmcluster_migration.py", "test/unit/test_migration_unit.py")
MIG_STATE = ("_states/kvmcluster_migration.py", "test/unit/test_migration_unit.py")
MUTS.update({
    "the source deletes disks while the VM is still defined there": (
        *MIG, "            conn.lookupByName(name)\n            return {\"deleted\": []",
        "            conn.lookupByName(\"-no-such-domain-\")\n            return {\"deleted\": []"),
    "the source deletes a disk another domain uses": (
        *MIG, "            if path in used:\n                kept[path]", "            if False:\n                kept[path]"),
    "the source deletes outside the primary pool": (
        *MIG, "            if os.path.dirname(path) != os.path.normpath(primary[\"path\"]):\n                kept[path]",
        "            if False:\n                kept[path]"),
    "the target overwrites an existing disk": (
        *MIG, "os.path.exists(d[\"path\"]) or _vol_exists(pool, d[\"path\"]):",
        "False:"),
    "migration over unauthenticated TCP": (
        *MIG, "    return f\"qemu+ssh://{user}@{node['ip']}/system\"",
        "    return f\"qemu+tcp://{node['ip']}/system\""),
    "host keys not checked": (
        *MIG_STATE, "            \"    StrictHostKeyChecking yes\\n\"", "            \"    StrictHostKeyChecking no\\n\""),
    "the migration key readable by all": (
        *MIG_STATE, "return {KEY_FILE: (key, 0o600)", "return {KEY_FILE: (key, 0o644)"),
    "the migration key admitted from anywhere": (
        "_states/kvmcluster_account.py", "test/unit/test_migration_unit.py",
        "    return [f'restrict,from=\"{\",\".join(peers)}\",command=\"{MIGRATION_COMMAND}\" {key} '\n"
        "            \"kvmcluster-migration\"]",
        "    return [f'{key} kvmcluster-migration']"),
    "a VM answering elsewhere is started again": (
        "_states/kvmcluster_vm.py", "test/unit/test_migration_unit.py",
        "            if seen:\n                raise sk.Refused(", "            if False:\n                raise sk.Refused("),
    "an extra package may be an apt option": (
        "_modules/kvmcluster_model.py", "test/unit/test_model.py",
        "_PKG = re.compile(r\"^[A-Za-z0-9][A-Za-z0-9+._-]{0,127}\\Z\", re.A)",
        "_PKG = re.compile(r\"^[A-Za-z0-9+._-]{1,128}\\Z\", re.A)"),
    "qemu.conf rewritten readable by all": (
        "_modules/kvmcluster_libvirt.py", HARDENING,
        "        mode = stat.S_IMODE(os.stat(path).st_mode)", "        mode = 0o644"),
    "QEMU listens on its own migration ports": (
        "_states/kvmcluster_libvirt.py", HARDENING,
        "(qemu_config, _qemu_settings(view) if qemu_config else {}, \" = \")]",
        "(qemu_config, {}, \" = \")]"),
    "an existing VM's image, clone or storage changed in silence": (
        "_states/kvmcluster_vm.py", "test/unit/test_vm_state.py",
        "        _refuse_rebuild(view, vm, cur)\n", "        pass\n"),
})
# Issue 21's guards: hostile values, writers, the account's ~/.ssh, revocation, secrets.
HOSTILE = ("_modules/kvmcluster_model.py", "test/unit/test_hostile_pillars.py")
WFUZZ = "test/unit/test_writers_fuzz.py"
ACCT = ("_states/kvmcluster_account.py", "test/unit/test_account_state.py")
MUTS.update({
    "an address may carry a scope id (or any text)": (
        *HOSTILE, "    if not isinstance(value, str) or not re.match(r\"^[0-9A-Fa-f.:/]{2,64}\\Z\", value, re.A):",
        "    if not isinstance(value, str):"),
    "export clients wider than the cluster": (
        *HOSTILE, "        elif not any(net.version == s.version and net.subnet_of(s) for s in subnets):",
        "        elif False:"),
    "export clients may cover guests": (
        *HOSTILE, "        return  # only over values already canonical", "        return"
        "\n    return"),
    "subnets of any width": (
        *HOSTILE, "        if net.prefixlen < SUBNET_MIN_PREFIX[net.version]:", "        if False:"),
    "paths of any characters": (
        *HOSTILE, "    bad = [seg for seg in value.split(\"/\")[1:] if not _PATH_SEGMENT.match(seg)]",
        "    bad = []"),
    "switches from strings ('false' is true)": (
        *HOSTILE, "    _check_booleans(errors, ROOT, c, defaults)\n", "    pass\n"),
    "the rw socket open to every account": (
        *HOSTILE, "        elif k == \"unix_sock_rw_perms\" and lv[k][-1] != \"0\":", "        elif False:"),
    "an SSH key with control characters": (
        *HOSTILE, "    if not re.match(r\"^[\\x20-\\x7e]{1,16384}\\Z\", text, re.A):", "    if False:"),
    "an SSH key body not decoded": (
        *HOSTILE, "    if blob[4:4 + n] != ktype.encode() or len(blob) <= 4 + n:", "    if False:"),
    "a kernel or initrd anywhere on the host": (
        *HOSTILE, "                if isinstance(mp, str) and not img[part].startswith(mp.rstrip(\"/\") + \"/\"):",
        "                if False:"),
    "lookup unchecked": (
        *HOSTILE, "    _check_lookup(errors, pillar.get(\"lookup\"))\n", ""),
    "a node id of another type": (
        *HOSTILE, "        if isinstance(name, bool) or not isinstance(name, (str, int)):", "        if False:"),
    "a key printed with its line breaks": (
        *HOSTILE, "        err = ModelError(_printable(node or \"cluster\"), _printable(key), reason)",
        "        err = ModelError(node or \"cluster\", key, reason)"),
    "render errors only when the pillar is a dict": (
        "_modules/kvmcluster_model.py", "test/unit/test_model.py",
        "    getter = getattr(pillar, \"get\", None)\n",
        "    getter = pillar.get if isinstance(pillar, dict) else None\n"),
    "a message quotes a secret": (
        "_modules/kvmcluster_model.py", "test/unit/test_secrets.py",
        "    return model, _without_secrets(errors, pillar)", "    return model, errors"),
    "the runner sends the secret to the nodes": (
        "_runners/kvmcluster.py", "test/unit/test_secrets.py",
        "        cluster = json.dumps(withhold(_node_pillar(node).get(ROOT) or {}), sort_keys=True,",
        "        cluster = json.dumps((_node_pillar(node).get(ROOT) or {}), sort_keys=True,"),
    "the guard lets control characters through": (
        "_utils/kvmcluster_safe.py", WFUZZ,
        "        if unicodedata.category(ch) in _NEVER or not _ALLOWED[spec].match(ch):",
        "        if not _ALLOWED[spec].match(ch):"),
    "network configuration unchecked": (
        "_modules/kvmcluster_netrender.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](f\"{backend} network configuration\", \"network\",",
        "    (lambda *a: None)(f\"{backend} network configuration\", \"network\","),
    "dnsmasq values unchecked": (
        "_modules/kvmcluster_dns.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"dnsmasq configuration\", \"dnsmasq\", {",
        "    (lambda *a: None)(\"dnsmasq configuration\", \"dnsmasq\", {"),
    "exports unchecked": (
        "_modules/kvmcluster_nfs.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"/etc/exports.d\", \"exports\",",
        "    (lambda *a: None)(\"/etc/exports.d\", \"exports\","),
    "fstab unchecked": (
        "_states/kvmcluster_nfs.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"/etc/fstab\", \"fstab\", {",
        "    (lambda *a: None)(\"/etc/fstab\", \"fstab\", {"),
    "sudoers unchecked": (
        "_states/kvmcluster_account.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"sudoers\", \"sudoers\", {\"account:name\": user})",
        "    pass"),
    "authorized_keys unchecked": (
        "_states/kvmcluster_account.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"authorized_keys\", \"authorized_keys\",",
        "    (lambda *a: None)(\"authorized_keys\", \"authorized_keys\","),
    "known_hosts unchecked": (
        "_states/kvmcluster_migration.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"known_hosts\", \"known_hosts\", {",
        "    (lambda *a: None)(\"known_hosts\", \"known_hosts\", {"),
    "AppArmor rule unchecked": (
        "_states/kvmcluster_security.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"AppArmor abstraction\", \"path\", {\"pool paths\": paths})",
        "    pass"),
    "libvirtd.conf unchecked": (
        "_states/kvmcluster_libvirt.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"libvirtd.conf\", \"libvirt_conf\",",
        "    (lambda *a: None)(\"libvirtd.conf\", \"libvirt_conf\","),
    "sysctl values unchecked": (
        "_states/kvmcluster_sysctl.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](\"sysctl drop-in\", \"sysctl\", {",
        "    (lambda *a: None)(\"sysctl drop-in\", \"sysctl\", {"),
    "domain XML unchecked": (
        "_modules/kvmcluster_vm.py", WFUZZ,
        "    __utils__[\"kvmcluster_safe.check\"](f\"libvirt XML <{tag}>\", \"xml\",",
        "    (lambda *a: None)(f\"libvirt XML <{tag}>\", \"xml\","),
    "fcontext regex unescaped": (
        "_utils/kvmcluster_safe.py", WFUZZ,
        "    return re.sub(r\"([.+])\", r\"\\\\\\1\", path.rstrip(\"/\")) + \"(/.*)?\"",
        "    return path.rstrip(\"/\") + \"(/.*)?\""),
    "~/.ssh opened through a link": (
        *ACCT, "                self.fd = os.open(\".ssh\", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,\n"
        "                                  dir_fd=home_fd)\n            except FileNotFoundError:",
        "                self.fd = os.open(\".ssh\", os.O_RDONLY | os.O_DIRECTORY,\n"
        "                                  dir_fd=home_fd)\n            except FileNotFoundError:"),
    "authorized_keys read through a link": (
        *ACCT, "            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)",
        "            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=self.fd)"),
    "a foreign or open ~/.ssh accepted": (
        *ACCT, "    if st.st_uid not in (uid, 0):", "    if False:"),
    "the temporary key file made through a link": (
        *ACCT, "        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,\n                     dir_fd=self.fd)",
        "        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600,\n                     dir_fd=self.fd)"),
    "a removed or renamed account keeps its grants": (
        *ACCT, "        return sorted(u for u in before if u != user)", "        return []"),
    "an absent account keeps sudo": (
        *ACCT, "    user = acct[\"name\"] if acct.get(\"state\", \"present\") == \"present\" else None",
        "    user = acct[\"name\"]"),
    "the sudoers path bound at import": (
        *ACCT, "    path = path or SUDOERS  # read at call time: a test's path is never the real one\n",
        "    path = path or \"/nonexistent-kvmcluster-mutant/kvmcluster\"\n"),
    "a client's own name enters the zone": (
        "_modules/kvmcluster_dns.py", MANAGEMENT, "             \"dhcp-ignore-names\"]",
        "             ]"),
    "a drop-in dnsmasq refuses is installed": (
        "_states/kvmcluster_dns.py", MANAGEMENT,
        "            __salt__[\"kvmcluster_dns.check_conf\"](want[\"conf\"])\n", "            pass\n"),
    "the share probe at a known name, through a link": (
        "_modules/kvmcluster_report.py", "test/unit/test_cluster_view.py",
        'name = ".kvmcluster-probe-" + secrets.token_hex(8)\nfd = os.open(os.path.join(sys.argv[1], name),\n'
        '             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)',
        'name = ".kvmcluster-probe-kvm01"\nfd = os.open(os.path.join(sys.argv[1], name),\n'
        '             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)'),
    "the migration key reaches a shell": (
        "_states/kvmcluster_account.py", "test/unit/test_migration_unit.py",
        "MIGRATION_COMMAND = \"/usr/bin/virt-ssh-helper qemu:///system\"",
        "MIGRATION_COMMAND = \"/bin/sh\""),
    "a guest's NIC carries no traffic filter": (
        "_modules/kvmcluster_vm.py", "test/unit/test_guard.py",
        "        iface.append(ref)\n    return iface", "    return iface"),
    "a running guest's filter waits for its next boot": (
        "_modules/kvmcluster_vm.py", "test/unit/test_guard.py",
        "            dom.updateDeviceFlags(ET.tostring(new, encoding=\"unicode\"),",
        "            (lambda *a: 0)(ET.tostring(new, encoding=\"unicode\"),"),
    "a guest may answer as a DHCP server": (
        "_utils/kvmcluster_guard.py", "test/unit/test_guard.py",
        "    ET.SubElement(rule, \"udp\", srcportstart=\"67\", srcportend=\"67\")\n", ""),
    "an unaddressed guest learns its address from anyone": (
        "_utils/kvmcluster_guard.py", "test/unit/test_guard.py",
        "        params += [(\"DHCPSERVER\", s) for s in servers]\n", ""),
    "antispoof false is ignored": (
        "_utils/kvmcluster_guard.py", "test/unit/test_guard.py",
        "    if not vm.get(\"antispoof\", True):\n        return None\n", ""),
    "a migration's stream in clear by default": (
        "_modules/kvmcluster_migration.py", "test/unit/test_migration_unit.py",
        "        if not view[\"migration\"][\"plaintext\"]:\n", "        if False:\n"),
    "qemu.conf lets a migration go in clear": (
        "_states/kvmcluster_libvirt.py", HARDENING,
        "\"migrate_tls_force\": 0 if mig[\"plaintext\"] else 1", "\"migrate_tls_force\": 0"),
    "a node installs a certificate for another key": (
        "_modules/kvmcluster_pki.py", "test/unit/test_pki.py",
        "                if not _u(\"same_key\")(cert, key):", "                if False:"),
    "a node installs a certificate of another CA": (
        "_modules/kvmcluster_pki.py", "test/unit/test_pki.py",
        "                if not _u(\"signed_by\")(cert, ca):", "                if False:"),
    "the runner signs the names a request asks for": (
        "_utils/kvmcluster_pki.py", "test/unit/test_pki.py",
        "    sans = [f\"DNS:{d}\" for d in dns]", "    sans = [f\"DNS:{d}\" for d in dns + [node + '.evil']]"),
    "a request's signature is not checked": (
        "_utils/kvmcluster_pki.py", "test/unit/test_pki.py",
        "    if not csr.is_signature_valid:", "    if False:"),
    "a certificate due for renewal is kept": (
        "_utils/kvmcluster_pki.py", "test/unit/test_pki.py",
        "    if left <= renew_hours * 3600:", "    if left <= 0:"),
    "the CA directory may be open to others": (
        "_runners/kvmcluster.py", "test/unit/test_pki.py",
        "        if os.fstat(fd).st_uid != os.geteuid() or os.fstat(fd).st_mode & 0o077:",
        "        if False:"),
    "root walks through a link on the share": (
        "_utils/kvmcluster_files.py", "test/unit/test_pki.py",
        "DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC",
        "DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC"),
    "root writes a new file through a planted link": (
        "_utils/kvmcluster_files.py", "test/unit/test_pki.py",
        "NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC",
        "NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC"),
    "the share marker follows a planted link": (
        "_states/kvmcluster_nfs.py", "test/unit/test_pki.py",
        "    if here not in (\"file\", \"absent\"):", "    if False:"),
    "a test may write outside its temporary roots": (
        "test/conftest.py", "test/unit/test_write_guard.py",
        "            _guard[\"hits\"].append(f\"{event} {path}\")", "            pass"),
    "the runner moves a VM whose certificates are not good": (
        "_runners/kvmcluster.py", "test/unit/test_runner_migrate.py",
        "    elif bad:\n", "    elif False:\n"),
    "a failed move leaves what it made on the target": (
        "_runners/kvmcluster.py", "test/unit/test_runner_migrate.py",
        "        if made:\n            # Only what prepare made", "        if False:\n            # Only what prepare made"),
    "the runner moves a VM that runs on two nodes": (
        "_runners/kvmcluster.py", "test/unit/test_runner_migrate.py",
        "    elif len(running) > 1:\n", "    elif False:\n"),
    "stop powers off at once": (
        "_modules/kvmcluster_vm.py", "test/unit/test_vm_module.py",
        "            dom.shutdown()\n", "            dom.destroy()\n"),
    "a guest that ignores ACPI keeps running": (
        "_modules/kvmcluster_vm.py", "test/unit/test_vm_module.py",
        "        if dom.isActive():\n            dom.destroy()\n", "        pass\n"),
    "another MAC at the VM's address counts as the VM": (
        "_modules/kvmcluster_vm.py", "test/unit/test_vm_module.py",
        "                mac is None or lladdr == str(mac).lower()):", "                True):"),
    "the stream ignores the migration network": (
        "_modules/kvmcluster_migration.py", "test/unit/test_migration_unit.py",
        "    return node.get(\"migration_ip\") or node[\"ip\"]", "    return node[\"ip\"]"),
    "the target's QEMU listens on every address": (
        "_modules/kvmcluster_migration.py", "test/unit/test_migration_unit.py",
        "            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = host\n", "            pass\n"),
    "migration ports open to the peers' node addresses beside a migration network": (
        "_modules/kvmcluster_firewall.py", HARDENING,
        "(movers if movers and peers else peers)", "(peers + movers)"),
    "a migration network may overlap the guests' subnet": (
        "_modules/kvmcluster_model.py", "test/unit/test_model.py",
        "            if s.version == net.version and s.overlaps(net):", "            if False:"),
    "certificates without the migration address": (
        "_modules/kvmcluster_pki.py", "test/unit/test_pki.py",
        "for a in (me.get(\"ip\"), me.get(\"ip6\"), me.get(\"migration_ip\")) if a]",
        "for a in (me.get(\"ip\"), me.get(\"ip6\")) if a]"),
    "export clients outside the storage network accepted": (
        "_modules/kvmcluster_model.py", "test/unit/test_storage_network.py",
        "            if not (net.version == storage_net.version and net.subnet_of(storage_net)):",
        "            if False:"),
    "the share's clients are the node addresses beside a storage network": (
        "_modules/kvmcluster_model.py", "test/unit/test_storage_network.py",
        "    field = \"ip\" if storage_net is None else \"storage_ip\"", "    field = \"ip\""),
    "a hypervisor needs no storage address": (
        "_modules/kvmcluster_model.py", "test/unit/test_storage_network.py",
        "if v.get(\"hypervisor\", True) or n == server]", "if n == server]"),
    "a node mounts without its storage address": (
        "_states/kvmcluster_nfs.py", "test/unit/test_storage_network.py",
        "    if view.get(\"networks\", {}).get(\"storage\") and sip and",
        "    if False and sip and"),
    "root not squashed by default": (
        "kvmcluster/parameters/defaults.yaml", "test/unit/test_nfs_squash.py",
        "export_options: [rw, sync, no_subtree_check, root_squash]",
        "export_options: [rw, sync, no_subtree_check, no_root_squash]"),
    "squashed root becomes nobody, not the QEMU account": (
        "_states/kvmcluster_nfs.py", "test/unit/test_nfs_squash.py",
        "            out.append(f\"{key}={account[field]}\")", "            pass"),
    "the export directory left to root": (
        "_states/kvmcluster_nfs.py", "test/unit/test_nfs_squash.py",
        "        os.fchown(fd, uid, gid)\n", "        pass\n"),
    "the export directory through a link": (
        "_states/kvmcluster_nfs.py", "test/unit/test_nfs_squash.py",
        "    if not os.path.isdir(path) or os.path.islink(path):", "    if False:"),
    "a live share squashed over root's disks": (
        "_states/kvmcluster_nfs.py", "test/unit/test_nfs_squash.py",
        "        if count and any(\"no_root_squash\" in o for o in live.values()):",
        "        if False:"),
    "volumes made without the QEMU account as owner": (
        "_modules/kvmcluster_vm.py", "test/unit/test_vm_module.py",
        "        owner=owner)", "        owner=None)"),
    "an NFS share relabelled on every run": (
        "_states/kvmcluster_security.py", HARDENING,
        "    return not (mount and str(mount.get(\"fstype\", \"\")).startswith(\"nfs\"))",
        "    return True"),
    "the share mounted with set-id programs allowed": (
        "kvmcluster/parameters/defaults.yaml", "test/unit/test_nfs_squash.py",
        "_netdev, nosuid, nodev, noexec]", "_netdev]"),
    "libvirt errors printed on stderr": (
        "_utils/kvmcluster_virt.py", "test/unit/test_virt_binding.py",
        "    libvirt.registerErrorHandler(_quiet, None)\n", ""),
    "a new pool directory left unlabelled under SELinux": (
        "_modules/kvmcluster_pool.py", "test/unit/test_pool_dir.py",
        "    if os.path.exists(\"/sys/fs/selinux/enforce\"):", "    if False:"),
})
# Arguments: run only the mutants whose names contain one of them.
if sys.argv[1:]:
    MUTS = {k: v for k, v in MUTS.items() if any(a in k for a in sys.argv[1:])}


def run_one(name, path, tests, old, new):
    """The mutant applied to a copy of HEAD; the fast tests named for it run there."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="kvmcluster-mutant-"))
    try:
        p1 = subprocess.Popen(["git", "-C", str(SRC), "archive", "HEAD"],
                              stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(work)], stdin=p1.stdout, check=True)
        p1.wait()
        f = work / path
        text = f.read_text()
        if text.count(old) != 1:
            return (name, "BROKEN", f"the mutated text occurs {text.count(old)} times in {path}")
        f.write_text(text.replace(old, new))
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              tests], cwd=work, capture_output=True, text=True, timeout=600,
                             env={**{k: v for k, v in os.environ.items()
                                     if k != "KVMCLUSTER_MODULE_TIMES"},
                                  "PYTHONPATH": "test", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
        last = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
        return (name, "KILLED" if res.returncode else "SURVIVED", last)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Each mutant works in its own copy: they run side by side, one per CPU.
jobs = int(os.environ.get("KVMCLUSTER_MUTANT_JOBS") or os.cpu_count() or 1)
with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    rows = list(pool.map(lambda item: run_one(item[0], *item[1]), MUTS.items()))
for r in rows:
    print(" | ".join(r))
counts = {k: sum(1 for r in rows if r[1] == k) for k in ("KILLED", "SURVIVED", "BROKEN")}
print(f"named mutants: {len(rows)}, killed {counts['KILLED']}, survived {counts['SURVIVED']}, "
      f"broken {counts['BROKEN']}")
sys.exit(1 if counts["SURVIVED"] or counts["BROKEN"] or not rows else 0)
