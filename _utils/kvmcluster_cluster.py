"""
The cluster view: the nodes' reports (``kvmcluster_report.node``) side by side, and what is
wrong across them (``__utils__["kvmcluster_cluster.findings"](reports)``). Pure functions
of the reports, used by the ``kvmcluster`` runner.

A finding is ``{"level": "error"|"warning", "node": node or None, "what": text}``. Errors
are what breaks the cluster's promise (a node unreachable, a bridge or pool missing, paths
or MTUs that differ, a share not mounted or not writable, a VM running twice); warnings are
what limits it (CPUs or versions that stop a migration one way, a pending network change,
a clock off).
"""

import time

CLOCK_TOLERANCE_S = 2.0
GIB = 1 << 30


def _f(level, node, what):
    return {"level": level, "node": node, "what": what}


def _hyper(rep):
    return (rep.get("model") or {}).get("hypervisor", True)


def _node_findings(name, rep, window):
    out = []
    if rep.get("unreachable"):
        return [_f("error", name, f"unreachable: {rep['unreachable']}")]
    if rep.get("model_error"):
        return [_f("error", name, f"pillar model invalid: {rep['model_error'][:300]}")]
    model = rep.get("model") or {}
    br = rep.get("bridge")
    if model.get("bridge"):
        if not isinstance(br, dict) or br.get("error"):
            out.append(_f("error", name, f"bridge {model['bridge']}: "
                                         f"{(br or {}).get('error', 'not reported')}"))
        elif not br.get("exists"):
            out.append(_f("error", name, f"bridge {model['bridge']} does not exist"))
        else:
            if br.get("operstate") not in ("up", "unknown"):
                out.append(_f("error", name, f"bridge {br['name']} is {br.get('operstate')}"))
            if model.get("mtu") and br.get("mtu") != model["mtu"]:
                out.append(_f("error", name, f"bridge {br['name']} MTU {br.get('mtu')}, the "
                                             f"model says {model['mtu']}"))
            ip = str(model.get("ip") or "").split("/", maxsplit=1)[0]
            if ip and ip not in [a.split("/")[0] for a in br.get("addresses", [])]:
                out.append(_f("error", name, f"bridge {br['name']} does not carry {ip}"))
            for port in br.get("ports", []):
                for s in port.get("slaves", []):
                    if not s.get("carrier"):
                        out.append(_f("warning", name, f"{port['name']} slave {s['name']}: "
                                                       "no link"))
                    elif s.get("lacp_in_aggregator") is False:
                        out.append(_f("warning", name, f"{port['name']} slave {s['name']}: "
                                                       "not in the LACP aggregator (switch "
                                                       "side not configured?)"))
            if not br.get("ports"):
                out.append(_f("error", name, f"bridge {br['name']} has no port to the "
                                             "network"))
    if _hyper(rep):
        if rep.get("libvirtd") != "active":
            out.append(_f("error", name, f"libvirtd is {rep.get('libvirtd')}"))
        lv = rep.get("libvirt") or {}
        if lv.get("error"):
            out.append(_f("error", name, f"libvirt: {lv['error']}"))
        for role, pool in (lv.get("pools") or {}).items():
            if not pool.get("defined"):
                out.append(_f("error", name, f"{role} pool {pool['name']} is not defined"))
            elif not pool.get("active"):
                out.append(_f("error", name, f"{role} pool {pool['name']} is not active"))
            elif pool.get("path") != pool.get("path_expected"):
                out.append(_f("error", name, f"{role} pool {pool['name']} at {pool.get('path')}"
                                             f", the model says {pool['path_expected']}"))
        sec = model.get("secondary") or {}
        share = rep.get("share")
        if sec.get("enabled"):
            if not isinstance(share, dict):
                out.append(_f("error", name, "shared storage not reported"))
            elif not share.get("mounted"):
                out.append(_f("error", name, f"shared storage {sec.get('mountpoint')} is not "
                                             f"mounted {share.get('error', '')}".strip()))
            elif not share.get("writable"):
                out.append(_f("error", name, f"shared storage {sec.get('mountpoint')} is not "
                                             f"writable as {share.get('qemu_user')}: "
                                             f"{share.get('error', 'read-only')}"))
    out.extend(_cert_findings(name, rep))
    pend = rep.get("network_pending")
    if isinstance(pend, dict) and pend.get("phase"):
        out.append(_f("warning", name, f"network change {pend.get('id')} pending "
                                       f"({pend['phase']}): confirm or let it roll back"))
    if rep.get("ntp_synchronized") is False:
        out.append(_f("warning", name, "clock not synchronized (NTP)"))
    off = clock_offset(rep, window)
    if off is not None and abs(off) > CLOCK_TOLERANCE_S:
        out.append(_f("warning", name, f"clock off by at least {off:+.1f} s from the "
                                       "management node's"))
    return out


def _cert_findings(name, rep):
    """A node's migration certificate (none yet is fine: a migration issues it): one that
    does not verify is an error, one due for renewal a warning."""
    cert, tls = rep.get("migration_cert"), (rep.get("model") or {}).get("migration_tls")
    if not _hyper(rep) or not isinstance(tls, dict) or tls.get("plaintext") or not cert:
        return []
    if not isinstance(cert, dict) or cert.get("error"):
        return [_f("error", name, f"migration certificate: {(cert or {}).get('error', cert)}")]
    bad = [why for ok, why in ((cert.get("signed_by_ca"), "not signed by the CA beside it"),
                               (cert.get("key_matches"), "not for the node's key"),
                               (cert.get("client_cert_same"), "client and server copies differ"))
           if not ok]
    if bad:
        return [_f("error", name, f"migration certificate {', '.join(bad)}: run salt-run "
                                  "kvmcluster.certificates")]
    left = _seconds_left(cert.get("not_after"), rep.get("time"))
    if left is not None and left <= (tls.get("renew_hours") or 0) * 3600:
        return [_f("warning", name, f"migration certificate "
                                    f"{'expires' if left > 0 else 'expired'} "
                                    f"{cert['not_after']}: run salt-run kvmcluster.certificates "
                                    "(a migration renews it too)")]
    return []


def _seconds_left(not_after, now):
    import datetime  # pylint: disable=import-outside-toplevel

    try:
        after = datetime.datetime.strptime(str(not_after), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None
    return after - float(now if isinstance(now, (int, float)) else time.time())


def _ca_findings(reports):
    """Nodes whose certificates come from different CAs cannot migrate to each other."""
    cas = {}
    for name, rep in reports.items():
        cert = rep.get("migration_cert")
        if isinstance(cert, dict) and cert.get("ca_fingerprint"):
            cas.setdefault(cert["ca_fingerprint"][:16], []).append(name)
    if len(cas) < 2:
        return []
    return [_f("error", None, "migration certificates from different CAs: " + "; ".join(
        f"{fp}: {', '.join(sorted(ns))}" for fp, ns in sorted(cas.items())))]


def clock_offset(rep, window):
    """How far the node's clock is, at least, outside the window ``(sent, received)`` of
    the management node's clock in which the node read its own (0 inside it)."""
    t = rep.get("time")
    if not isinstance(t, (int, float)) or not window:
        return None
    lo, hi = window
    if t < lo:
        return t - lo
    if t > hi:
        return t - hi
    return 0.0


def _differs(reports, label, get):
    """One error when nodes disagree on a value that must be the same everywhere."""
    seen = {}
    for name, rep in reports.items():
        try:
            value = get(rep)
        except (KeyError, TypeError, AttributeError):
            value = None
        if value is not None:
            seen.setdefault(value, []).append(name)
    if len(seen) > 1:
        parts = "; ".join(f"{v}: {', '.join(sorted(n))}" for v, n in sorted(
            seen.items(), key=lambda kv: str(kv[0])))
        return [_f("error", None, f"{label} differs between nodes ({parts})")]
    return []


def cpu_compatibility(reports):
    """``{(a, b): missing}``: the features a guest started on ``a`` (host CPU model) needs
    that node ``b``'s CPU lacks (empty: it can move a -> b)."""
    cpus = {}
    for name, rep in reports.items():
        cpu = ((rep.get("libvirt") or {}).get("cpu") or {}) if _hyper(rep) else {}
        if cpu.get("features") is not None:
            cpus[name] = cpu
    out = {}
    for a, ca in cpus.items():
        for b, cb in cpus.items():
            if a == b:
                continue
            missing = sorted(set(ca["features"]) - set(cb["features"]))
            if ca.get("vendor") != cb.get("vendor"):
                missing = [f"vendor {ca.get('vendor')} != {cb.get('vendor')}"] + missing
            out[(a, b)] = missing
    return out


def _version_tuple(text):
    try:
        return tuple(int(x) for x in str(text).split("."))
    except ValueError:
        return None


def placement(reports):
    """``{vm: {"model": node, "running": [nodes], "stopped": [nodes]}}`` for the VMs of the
    model and every VM some node runs."""
    out = {}
    model_vms = {}
    for rep in reports.values():
        model_vms.update((rep.get("model") or {}).get("vms") or {})
    for vm, node in model_vms.items():
        out[vm] = {"model": node, "running": [], "stopped": []}
    for name, rep in sorted(reports.items()):
        vms = (rep.get("libvirt") or {}).get("vms") or {}
        for state in ("running", "stopped"):
            for vm in vms.get(state) or []:
                out.setdefault(vm, {"model": None, "running": [], "stopped": []})[state].append(
                    name)
    return out


def findings(reports, window=None):
    """Every finding of the nodes' ``reports`` (``{node: report}``; an unreachable node's
    report is ``{"unreachable": reason}``), errors first."""
    out = []
    for name in sorted(reports):
        out += _node_findings(name, reports[name], window)
    ok = {n: r for n, r in reports.items() if not r.get("unreachable")
          and not r.get("model_error")}
    hyper = {n: r for n, r in ok.items() if _hyper(r)}
    out += _ca_findings(hyper)
    out += _differs(ok, "bridge MTU", lambda r: r["bridge"]["mtu"])
    out += _differs(hyper, "primary pool path",
                    lambda r: r["libvirt"]["pools"]["primary"]["path"])
    out += _differs(hyper, "secondary pool path",
                    lambda r: r["libvirt"]["pools"]["secondary"]["path"])
    for (a, b), missing in sorted(cpu_compatibility(hyper).items()):
        if missing:
            out.append(_f("warning", None, f"CPU: guests of {a} (host-model) cannot move to "
                                           f"{b}, which lacks {', '.join(missing[:8])}"
                                           + (" ..." if len(missing) > 8 else "")))
    for key, label in (("qemu_version", "QEMU"), ("libvirt_version", "libvirt")):
        versions = {n: r["libvirt"].get(key) for n, r in hyper.items()
                    if isinstance(r.get("libvirt"), dict) and r["libvirt"].get(key)}
        tuples = {n: _version_tuple(v) for n, v in versions.items() if _version_tuple(v)}
        if len(set(tuples.values())) > 1:
            newest = max(tuples.values())
            old = sorted(n for n, t in tuples.items() if t < newest)
            level = "error" if any(t[0] != newest[0] for t in tuples.values()) else "warning"
            out.append(_f(level, None, f"{label} versions differ ("
                          + ", ".join(f"{n} {versions[n]}" for n in sorted(versions))
                          + f"): guests started on the newer cannot always move to "
                          f"{', '.join(old)}"))
    for vm, where in sorted(placement(ok).items()):
        if len(where["running"]) > 1:
            out.append(_f("error", None, f"VM {vm} runs on {len(where['running'])} nodes: "
                                         f"{', '.join(where['running'])}"))
        elif where["model"] and where["running"] and where["running"][0] != where["model"]:
            out.append(_f("warning", where["running"][0],
                          f"VM {vm} runs on {where['running'][0]}, the model places it on "
                          f"{where['model']}: salt-run kvmcluster.migrate vm={vm} "
                          f"target={where['model']}"))
        elif len(where["running"]) + len(where["stopped"]) > 1:
            out.append(_f("warning", None, f"VM {vm} is defined on "
                          + ", ".join(sorted(where["running"] + where["stopped"]))))
    return sorted(out, key=lambda f: (f["level"] != "error", f["node"] or "", f["what"]))


# ---- the table ------------------------------------------------------------------------

def _gib(n):
    return f"{n / GIB:.0f}G" if isinstance(n, (int, float)) else "?"


def _pool_cell(pool, wide=True):
    if not pool:
        return "-"
    if not pool.get("active"):
        return "INACTIVE" if pool.get("defined") else "MISSING"
    # The path is the same on every node (a path that differs is a finding): narrow tables
    # show the free space only.
    return f"{pool.get('path')} {_gib(pool.get('available'))} free" if wide \
        else f"{_gib(pool.get('available'))} free"


def _port_cell(br, wide=True):
    cells = []
    for port in br.get("ports") or []:
        if port.get("kind") == "bond" and not wide:
            # Slaves with link and in the aggregator, of all (each one missing is a finding).
            slaves = port.get("slaves", [])
            good = sum(1 for s in slaves if s.get("carrier")
                       and s.get("lacp_in_aggregator") is not False)
            cells.append(f"{port['name']} {good}/{len(slaves)}")
        elif port.get("kind") == "bond":
            slaves = ",".join(
                s["name"] + ("" if s.get("carrier") else "(down)")
                + ("(no-lacp)" if s.get("lacp_in_aggregator") is False else "")
                for s in port.get("slaves", []))
            cells.append(f"{port['name']}[{port.get('mode')}:{slaves}]")
        else:
            cells.append(port["name"])
    return " ".join(cells) or "-"


def _cert_cell(rep):
    """The migration certificate's expiry (UTC), or why there is none to show."""
    cert = rep.get("migration_cert")
    if not _hyper(rep):
        return "-"
    if not cert:
        return "none yet"
    if not isinstance(cert, dict) or cert.get("error"):
        return "ERROR"
    return cert.get("not_after", "?").replace("T", " ").rstrip("Z")[:16]


def row(name, rep, window=None, wide=True):
    """One node's cells, in the order of COLUMNS (``wide``) or of NARROW."""
    cells = _row(name, rep, window, wide)
    return cells if wide else [c for c, h in zip(cells, COLUMNS) if h in NARROW]


def _row(name, rep, window, wide):
    if rep.get("unreachable"):
        return [name, "UNREACHABLE"] + [""] * (len(COLUMNS) - 2)
    if rep.get("model_error"):
        return [name, "MODEL ERROR"] + [""] * (len(COLUMNS) - 2)
    br = rep.get("bridge") if isinstance(rep.get("bridge"), dict) else {}
    lv = rep.get("libvirt") if isinstance(rep.get("libvirt"), dict) else {}
    pools = lv.get("pools") or {}
    share = rep.get("share") if isinstance(rep.get("share"), dict) else None
    vms = lv.get("vms") or {}
    cpu = lv.get("cpu") or {}
    if share is None:
        share_cell = "-"
    elif not share.get("mounted"):
        share_cell = "NOT MOUNTED"
    else:
        share_cell = f"{share.get('fstype')} " + ("rw" if share.get("writable") else "NOT WRITABLE")
    addr = ",".join(a for a in br.get("addresses", []) if ":" not in a) if br else \
        str((rep.get("model") or {}).get("ip") or "-")
    off = clock_offset(rep, window)
    pend = rep.get("network_pending")
    return [
        name,
        (f"{br.get('name')} " if br.get("exists") else "") + (addr or "-"),
        _port_cell(br, wide) if br.get("exists") else ("NO BRIDGE" if br else "-"),
        str(br.get("mtu") or "-"),
        str(rep.get("libvirtd") or "-"),
        _pool_cell(pools.get("primary"), wide),
        _pool_cell(pools.get("secondary"), wide),
        share_cell,
        f"{len(vms.get('running') or [])}/{len(vms.get('running') or []) + len(vms.get('stopped') or [])}"
        if lv else "-",
        f"{cpu.get('model') or '-'}",
        f"{lv.get('libvirt_version', '-')}/{lv.get('qemu_version', '-')}" if lv else "-",
        (pend.get("phase") if isinstance(pend, dict) and pend.get("phase") else "-"),
        "-" if off is None else f"{off:+.1f}s",
        _cert_cell(rep),
    ]


COLUMNS = ["NODE", "BRIDGE ADDRESS", "PORT", "MTU", "LIBVIRTD", "PRIMARY", "SECONDARY",
           "SHARE", "VMS RUN/ALL", "CPU", "LIBVIRT/QEMU", "NET TXN", "CLOCK", "MIGRATION CERT"]
# The default table fits a 120-column terminal: CPU, versions and clock disagree only as
# findings (printed below the table); ``columns=all`` shows them per node.
NARROW = ["NODE", "BRIDGE ADDRESS", "PORT", "MTU", "LIBVIRTD", "PRIMARY", "SECONDARY",
          "SHARE", "VMS RUN/ALL", "NET TXN"]


def table(reports, found, window=None, wide=False):
    """The cluster at a glance: one line per node (NARROW columns, or all when ``wide``),
    then the findings."""
    head = COLUMNS if wide else NARROW
    rows = [head] + [row(n, reports[n], window, wide) for n in sorted(reports)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    if not found:
        lines.append("no findings: the nodes agree")
    for f in found:
        where = f"{f['node']}: " if f["node"] else ""
        lines.append(f"{f['level'].upper():7} {where}{f['what']}")
    return "\n".join(lines)
