"""
State for the cluster's DNS and DHCP on the management node(s): dnsmasq from the model
(see ``kvmcluster_dns``). Elsewhere it does nothing.
"""

import time

__virtualname__ = "kvmcluster_dns"


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _text(lines):
    return "\n".join(["# Managed by kvmcluster (pillar kvmcluster:dns, kvmcluster:dhcp).",
                      *lines]) + "\n"


def _lines(text):
    return [ln for ln in (text or "").splitlines() if ln and not ln.startswith("#")]


def served(name, packages=(), service="dnsmasq.service"):
    """
    On a management node: dnsmasq answers for every node, record and lease of the model on
    the node's own addresses only, and serves the static leases (and the dynamic range) by
    DHCP. A change of records or leases is a SIGHUP (same PID, no gap in DNS); only a change
    of the drop-in restarts dnsmasq. Under test=True the record and lease diff is shown.

    name
        Any; reported back.
    packages
        map.jinja ``pkgs:dns`` (dnsmasq).
    service
        The dnsmasq unit.
    """
    view = __salt__["kvmcluster_model.current"]()
    me = view["self"]
    if not me.get("management"):
        return _skeleton().ret(name, comment=f"{me['name']} is not a management node: "
                               "DNS and DHCP are served elsewhere")
    test = __opts__["test"]
    conf = __salt__["kvmcluster_dns.conf_text"](view)
    want_hosts = _text(__salt__["kvmcluster_dns.hosts_lines"](view))
    want_leases = _text(__salt__["kvmcluster_dns.dhcp_host_lines"](view))
    paths = __salt__["kvmcluster_dns.files"]()
    want = {"conf": conf, "hosts": want_hosts, "leases": want_leases}
    addresses = __salt__["kvmcluster_dns.addresses"](me)

    def diff():
        changes = {}
        pkgs = _skeleton().packages_diff(__salt__, list(packages), test)
        if pkgs:
            changes["packages"] = pkgs
        for key, path in paths.items():
            cur = __salt__["kvmcluster_node.file_text"](path)
            if cur == want[key]:
                continue
            if key == "conf":
                changes[path] = {"old": cur, "new": want[key]}
            else:
                old, new = set(_lines(cur)), set(_lines(want[key]))
                # The record and lease diff: what goes, what comes.
                changes[path] = {"old": sorted(old - new), "new": sorted(new - old)}
        unit = __salt__["kvmcluster_node.unit_state"](service)
        if not pkgs and (unit["enabled"] != "enabled" or not unit["active"]):
            changes["service"] = {"old": unit["label"], "new": "enabled/active"}
        elif pkgs:
            changes["service"] = {"old": "absent", "new": "enabled/active"}
        return changes

    def apply(changes):
        if paths["conf"] in changes:
            # dnsmasq reads the new drop-in before it is installed (where it is installed).
            __salt__["kvmcluster_dns.check_conf"](want["conf"])
        __salt__["kvmcluster_dns.ensure_dir"]()
        # Files first: a package that starts dnsmasq on install starts it on our drop-in
        # (bound to the model's addresses), never on the wildcard.
        for key, path in paths.items():
            if path in changes:
                __salt__["kvmcluster_node.write_file"](path, want[key])
        if "packages" in changes:
            _skeleton().packages_install(__salt__, changes["packages"])
        if "service" in changes or paths["conf"] in changes:
            __salt__["kvmcluster_node.systemctl"]("enable", service)
            __salt__["kvmcluster_node.systemctl"]("restart", service)
            return "dnsmasq restarted"
        if paths["hosts"] in changes or paths["leases"] in changes:
            __salt__["kvmcluster_dns.reload"](service)
            return "dnsmasq re-read its records and leases (SIGHUP, same process)"
        return None

    def verify():
        left = {k: v for k, v in diff().items() if k != "packages"}
        # A restarted dnsmasq binds within a moment: look for up to 5 s.
        deadline = time.monotonic() + 5
        while True:
            listen = __salt__["kvmcluster_dns.listening"](53)
            ok = set(listen) == set(addresses)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not ok:
            left["listening"] = {"old": listen, "new": addresses}
        return left

    return _skeleton().converge(
        name, test, diff, apply, verify,
        ok=f"dnsmasq serves the model on {', '.join(addresses)}",
        planned=lambda c: f"dnsmasq would change: {', '.join(c)}",
        done=lambda c: f"dnsmasq on {', '.join(addresses)}: {', '.join(c)}")
