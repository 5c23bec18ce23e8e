"""
State for the VMs of the cluster model (``kvmcluster:vms``) that belong on this node.

One state for all of them, so that the node's capacity is checked for the whole plan before
anything changes. Changes are keyed by VM name, ``{"old", "new"}``: a new VM (``old`` None),
drift in vcpus, memory, disk size, NIC, autostart or power state, or a removal (``new``
None). Image, clone and storage are fixed when a VM is made: a model that differs there
stops the run with the reason (never a silent skip, never a remade disk). Domains that
kvmcluster did not make are never touched.
"""
import math

__virtualname__ = "kvmcluster_vm"

GIB = 1 << 30


def __virtual__():
    return __virtualname__


def _skeleton():
    return __utils__["kvmcluster_state.skeleton"]()


def _nic(view):
    net = view["network"]
    if net.get("libvirt_network"):
        return {"network": net["libvirt_network"], "bridge": None}
    return {"network": None, "bridge": view["self"]["bridge"]["name"]}


def _nic_label(nic):
    return f"network {nic['network']}" if nic["network"] else f"bridge {nic['bridge']}"


def _guard(view, vm):
    return __utils__["kvmcluster_guard.wanted"](view, vm)


def _want(view, vm):
    """What the model says, in the terms ``changes`` reports."""
    return {"image": vm["image"], "clone": vm["clone"], "vcpus": vm["vcpus"],
            "memory_mb": vm["memory_mb"], "disk_gb": vm["disk_gb"],
            "disks_gb": [d["size_gb"] for d in vm["disks"]], "mac": vm["mac"],
            "nic": _nic_label(_nic(view)),
            "filter": __utils__["kvmcluster_guard.label"](_guard(view, vm)),
            "autostart": vm["autostart"], "state": vm["state"]}


def _have(cur):
    """The same terms, read from the node."""
    nic = {"network": cur.get("network"), "bridge": cur.get("bridge")}
    disks = cur.get("disks") or []
    sizes = [math.ceil((d.get("capacity") or 0) / GIB) for d in disks]
    return {"vcpus": cur["vcpus"], "memory_mb": cur["memory_mb"],
            "disk_gb": sizes[0] if sizes else None, "disks_gb": sizes[1:], "mac": cur["mac"],
            "nic": _nic_label(nic), "filter": __utils__["kvmcluster_guard.label"](cur.get("guard")),
            "autostart": cur["autostart"],
            "state": "running" if cur["active"] else "stopped"}


def _plan(view, vms, uri):
    """(changes, current) for this node's VMs; Refused when a VM cannot be handled."""
    sk = _skeleton()
    changes, current = {}, {}
    sec_pool = view["storage"]["secondary"]["pool"]["name"]
    pri_pool = view["storage"]["primary"]["name"]
    # Under test on a fresh node, libvirt or the pools may not exist yet (earlier states
    # install and define them): every VM is then predicted as new.
    fresh = __opts__["test"] and not _libvirt_ready(pri_pool, sec_pool, uri)
    for name, vm in sorted(vms.items()):
        cur = {"exists": False} if fresh else __salt__["kvmcluster_vm.describe"](name, uri=uri)
        current[name] = cur
        if cur["exists"] and not cur["owned"]:
            raise sk.Refused(f"VM {name}: a domain of that name exists on "
                             f"{view['self']['name']} and was not made by kvmcluster; it is "
                             "left alone (rename one of them)")
        if vm["state"] == "absent":
            if cur["exists"]:
                changes[name] = {"old": {"state": _have(cur)["state"],
                                         "volumes": [v["path"] for v in cur["volumes"]]},
                                 "new": None}
            continue
        want = _want(view, vm)
        if not cur["exists"] and vm["state"] == "running" and vm.get("ip"):
            # Never a second copy: a VM that answers at its address runs somewhere already
            # (on its old node after a placement change, or by hand).
            seen = __salt__["kvmcluster_vm.answers"](vm["ip"], vm["mac"])
            if seen:
                raise sk.Refused(
                    f"VM {name} is not on {view['self']['name']} but answers at {vm['ip']} "
                    f"({seen}): it runs elsewhere; move it with salt-run kvmcluster.migrate "
                    f"vm={name} target={view['self']['name']} (or salt-run kvmcluster.place)")
        if not cur["exists"] and fresh:
            changes[name] = {"old": None, "new": want}
            continue
        if not cur["exists"]:
            img = view["images"][vm["image"]]
            gold = __salt__["kvmcluster_vm.golden"](img, sec_pool, uri=uri)
            if gold["capacity"] > vm["disk_gb"] * GIB:
                raise sk.Refused(f"VM {name}: image {img['name']} is "
                                 f"{gold['capacity'] / GIB:.1f} GiB, larger than disk_gb "
                                 f"{vm['disk_gb']}")
            for vol in _volume_names(vm):
                if __salt__["kvmcluster_vm.volume_exists"](vm["pool"], vol, uri=uri):
                    raise sk.Refused(f"VM {name}: volume {vol} already exists in pool "
                                     f"{vm['pool']} and no VM of that name does here; remove "
                                     "or rename it first (it is not the formula's to reuse)")
            changes[name] = {"old": None, "new": want}
            continue
        _refuse_rebuild(view, vm, cur)
        have = _have(cur)
        if have["disks_gb"] and len(have["disks_gb"]) != len(want["disks_gb"]):
            raise sk.Refused(f"VM {name}: has {len(have['disks_gb'])} extra disks, the model "
                             f"{len(want['disks_gb'])}; extra disks of an existing VM are not "
                             "added or removed by the formula")
        diff_old, diff_new = {}, {}
        for key in ("vcpus", "memory_mb", "disk_gb", "disks_gb", "mac", "nic", "filter",
                    "autostart", "state"):
            if have.get(key) != want[key]:
                if key in ("disk_gb",) and have[key] > want[key] or key == "disks_gb" and any(
                        h > w for h, w in zip(have[key], want[key])):
                    raise sk.Refused(f"VM {name}: its disk is larger than the model's "
                                     f"{key} ({have[key]} > {want[key]}); disks are never "
                                     "shrunk")
                diff_old[key], diff_new[key] = have[key], want[key]
        if diff_new:
            changes[name] = {"old": diff_old, "new": diff_new}
    return changes, current


def _made_with(view, cur):
    """What an existing VM was made with, from the formula's metadata (None: not recorded):
    its image, clone, and the pool its first disk is in."""
    vols = cur.get("volumes") or []
    return {"image": cur.get("image"), "clone": cur.get("clone"),
            "pool": vols[0].get("pool") if vols else None}


def _storage_label(view, pool):
    if pool == view["storage"]["primary"]["name"]:
        return "'primary'"
    if pool == (view["storage"]["secondary"].get("pool") or {}).get("name"):
        return "'secondary'"
    return f"pool {pool!r}"


def _refuse_rebuild(view, vm, cur):
    """Image, clone and storage are fixed when a VM is made: changing one would mean a new
    disk (its data lost) or moving it, so a difference stops the run rather than being
    skipped in silence."""
    made = _made_with(view, cur)
    for key, got, want in (("image", made["image"], vm["image"]),
                           ("clone", made["clone"], vm["clone"]),
                           ("storage", made["pool"], vm["pool"])):
        if got is None or got == want:
            continue
        was = _storage_label(view, got) if key == "storage" else repr(got)
        raise _skeleton().Refused(
            f"VM {vm['name']} on {view['self']['name']}: kvmcluster:vms:{vm['name']}:{key} "
            f"is {vm[key]!r} but the VM was made with {was}; the formula never remakes or "
            "moves an existing VM's disks: set it back, or remove the VM (state: absent), "
            "apply, then add it again (its disks start anew)")


def _golden_paths(view, uri):
    """Every golden image's file, never to be deleted (a missing one protects nothing)."""
    out = []
    for img in view["images"].values():
        try:
            out.append(__salt__["kvmcluster_vm.golden"](
                img, view["storage"]["secondary"]["pool"]["name"], uri=uri)["path"])
        except Exception:  # pylint: disable=broad-except
            if img.get("path"):
                out.append(img["path"])
    return out


def _libvirt_ready(pri_pool, sec_pool, uri):
    """Whether libvirt answers here with both pools active."""
    try:
        return all(__salt__["kvmcluster_pool.describe"](p, uri=uri).get("active")
                   for p in (pri_pool, sec_pool))
    except Exception:  # pylint: disable=broad-except
        return False


def _volume_names(vm):
    return [f"{vm['name']}.qcow2"] + [f"{vm['name']}-disk{i}.qcow2"
                                      for i in range(1, len(vm["disks"]) + 1)]


def _check_capacity(view, vms, changes, uri):
    """Refused when the plan would commit more memory or vcpus than the node allows."""
    adding = [n for n, ch in changes.items() if ch["new"] is not None and (
        ch["old"] is None or "state" in ch["new"] or "memory_mb" in ch["new"]
        or "vcpus" in ch["new"])]
    if not adding:
        return
    try:
        cap = __salt__["kvmcluster_vm.capacity"](uri=uri)
    except Exception:  # pylint: disable=broad-except
        if __opts__["test"]:
            return  # no libvirt yet under test: the real run checks
        raise
    limits = view["vm"]
    running = {n for n, vm in vms.items() if vm["state"] == "running"}
    others = {n: c for n, c in cap["committed"].items() if n not in vms}
    before = {k: sum(c[k] for c in cap["committed"].values()) for k in ("memory_mb", "vcpus")}
    after = {k: sum(c[k] for c in others.values()) + sum(vms[n][k] for n in running)
             for k in ("memory_mb", "vcpus")}
    me = view["self"]["name"]
    mem_limit = cap["memory_mb"] - limits["memory_reserve_mb"]
    cpu_limit = cap["cpus"] * limits["vcpu_ratio"]
    why = []
    if after["memory_mb"] > before["memory_mb"] and after["memory_mb"] > mem_limit:
        why.append(f"memory: {after['memory_mb']} MiB committed, the node allows {mem_limit} "
                   f"MiB ({cap['memory_mb']} MiB minus the reserve "
                   f"{limits['memory_reserve_mb']} MiB, kvmcluster:vm:memory_reserve_mb)")
    if after["vcpus"] > before["vcpus"] and after["vcpus"] > cpu_limit:
        why.append(f"vcpus: {after['vcpus']} committed, the node allows {cpu_limit:g} "
                   f"({cap['cpus']} CPUs x kvmcluster:vm:vcpu_ratio {limits['vcpu_ratio']})")
    if why:
        raise _skeleton().Refused(
            f"{me} cannot take VM {', '.join(sorted(adding))} (kvmcluster:vms): "
            + "; ".join(why) + "; nothing was changed")


def _create(view, vm, uri):
    """Clone, define, autostart, start; on failure, what this run made is removed again."""
    pri_pool = vm["pool"]
    sec_pool = view["storage"]["secondary"]["pool"]["name"]
    img = view["images"][vm["image"]]
    made = []
    try:
        gold = __salt__["kvmcluster_vm.golden"](img, sec_pool, uri=uri)
        names = _volume_names(vm)
        made.append(__salt__["kvmcluster_vm.create_volume"](
            pri_pool, names[0], vm["disk_gb"], source=gold, linked=vm["clone"] == "linked",
            uri=uri))
        for vol, d in zip(names[1:], vm["disks"]):
            made.append(__salt__["kvmcluster_vm.create_volume"](pri_pool, vol, d["size_gb"],
                                                                uri=uri))
        nic = _nic(view)
        xml = __salt__["kvmcluster_vm.domain_xml"](vm, img, made, network=nic["network"],
                                                   bridge=nic["bridge"],
                                                   guard=_guard(view, vm))
        __salt__["kvmcluster_vm.define"](xml, uri=uri)
        __salt__["kvmcluster_vm.set_autostart"](vm["name"], vm["autostart"], uri=uri)
        if vm["state"] == "running":
            __salt__["kvmcluster_vm.start"](vm["name"], uri=uri)
    except Exception:
        _undo(vm["name"], pri_pool, made, uri)
        raise
    return f"{vm['name']}: created ({vm['clone']} clone of {img['name']})"


def _undo(name, pool, made, uri):
    try:
        if __salt__["kvmcluster_vm.describe"](name, uri=uri)["exists"]:
            __salt__["kvmcluster_vm.remove"](name, pool, uri=uri)
            return
    except Exception:  # pylint: disable=broad-except
        pass
    for vol in made:
        try:
            __salt__["kvmcluster_vm.delete_volume"](vol["pool"], vol["name"], uri=uri)
        except Exception:  # pylint: disable=broad-except
            pass


def _update(view, vm, ch, cur, uri):
    name, new = vm["name"], ch["new"]
    notes = []
    if "vcpus" in new or "memory_mb" in new:
        done = __salt__["kvmcluster_vm.set_resources"](
            name, vcpus=new.get("vcpus"), memory_mb=new.get("memory_mb"), uri=uri)
        for when, what in done.items():
            if what:
                notes.append(f"{' and '.join(what)} {'live' if when == 'live' else 'at the next boot'}")
    if "disk_gb" in new:
        how = __salt__["kvmcluster_vm.resize_disk"](name, cur["disks"][0]["path"],
                                                    new["disk_gb"], uri=uri)
        notes.append(f"disk grown {how}")
    for i, size in enumerate(new.get("disks_gb") or []):
        d = cur["disks"][i + 1]
        if math.ceil((d.get("capacity") or 0) / GIB) != size:
            how = __salt__["kvmcluster_vm.resize_disk"](name, d["path"], size, uri=uri)
            notes.append(f"disk {d['target']} grown {how}")
    if "mac" in new or "nic" in new or "filter" in new:
        nic = _nic(view)
        when = __salt__["kvmcluster_vm.set_interface"](name, vm["mac"], network=nic["network"],
                                                       bridge=nic["bridge"],
                                                       guard=_guard(view, vm), uri=uri)
        what = "NIC" if "mac" in new or "nic" in new else "traffic filter"
        notes.append(f"{what} {'at the next boot' if when == 'next boot' else 'changed'}")
    if "autostart" in new:
        __salt__["kvmcluster_vm.set_autostart"](name, new["autostart"], uri=uri)
    if new.get("state") == "running":
        __salt__["kvmcluster_vm.start"](name, uri=uri)
        notes.append("started")
    elif new.get("state") == "stopped":
        how = __salt__["kvmcluster_vm.stop"](name, timeout=vm["shutdown_timeout"], uri=uri)
        notes.append(f"shut down by ACPI in {how['seconds']} s" if how["how"] == "acpi" else
                     f"did not stop within {vm['shutdown_timeout']} s of an ACPI shutdown: "
                     "powered off" if how["how"] == "destroyed" else "already stopped")
    return f"{name}: " + "; ".join(notes or ["updated"])


def filter_defined(name, uri="qemu:///system"):
    """
    The guests' traffic filter (``kvmcluster-guest``: libvirt's clean-traffic, and no
    guest answering as a DHCP server) defined on this hypervisor as the formula writes it,
    before any VM that carries it starts. test=True reports the same change.

    name
        Any; reported back.
    """
    sk = _skeleton()
    view = __salt__["kvmcluster_model.current"]()
    skip = sk.not_a_hypervisor(name, view)
    if skip:
        return skip
    filter_name = __utils__["kvmcluster_guard.filter_name"]()

    def diff():
        try:
            got = __salt__["kvmcluster_vm.ensure_filter"](test=True, uri=uri)
        except Exception:  # pylint: disable=broad-except
            if not __opts__["test"]:
                raise
            # Under test on a fresh node libvirt is not installed yet: the filter is new.
            got = {"old": None, "new": __salt__["kvmcluster_vm.wanted_filter"]()}
        return {filter_name: got} if got else {}

    def apply(changes):  # noqa: ARG001
        __salt__["kvmcluster_vm.ensure_filter"](uri=uri)
        return f"defined {filter_name}"

    return sk.converge(name, __opts__["test"], diff, apply, diff,
                       ok=f"{filter_name} as the formula writes it",
                       planned=lambda c: f"would define {filter_name}",
                       done=lambda c: f"defined {filter_name}")


def managed(name, uri="qemu:///system"):
    """
    The VMs the model puts on this node (``kvmcluster:vms:<vm>:node``) exist as the model
    says: cloned from their golden image, defined with the formula's metadata, autostart
    and power state as asked; ``state: absent`` ones removed with the volumes the formula
    made for them. The node's capacity (memory minus ``vm:memory_reserve_mb``, CPUs times
    ``vm:vcpu_ratio``) is checked for the whole plan before anything changes.

    name
        Any; reported back.
    """
    sk = _skeleton()
    view = __salt__["kvmcluster_model.current"]()
    skip = sk.not_a_hypervisor(name, view)
    if skip:
        return skip
    me = view["self"]["name"]
    vms = {n: v for n, v in view["vms"].items() if v["node"] == me}
    if not vms:
        return sk.ret(name, True, f"no VMs for {me} in the model (kvmcluster:vms)")
    state = {}

    def diff():
        changes, state["current"] = _plan(view, vms, uri)
        _check_capacity(view, vms, changes, uri)
        return changes

    def apply(changes):
        notes = []
        protected = _golden_paths(view, uri)
        # Removals first: they free what the others may need.
        for vm_name in sorted(changes, key=lambda n: changes[n]["new"] is not None):
            ch, vm = changes[vm_name], vms[vm_name]
            if ch["new"] is None:
                gone = __salt__["kvmcluster_vm.remove"](vm_name, vm["pool"],
                                                        protected=protected, uri=uri)
                kept = "; kept " + ", ".join(f"{p} ({why})" for p, why in gone["kept"].items()) \
                    if gone["kept"] else ""
                notes.append(f"{vm_name}: removed with {len(gone['deleted'])} volume(s){kept}")
            elif ch["old"] is None:
                notes.append(_create(view, vm, uri))
            else:
                notes.append(_update(view, vm, ch, state["current"][vm_name], uri))
        return "; ".join(notes)

    def verify():
        left, _ = _plan(view, vms, uri)
        return left

    return sk.converge(name, __opts__["test"], diff, apply, verify,
                       ok=f"{len(vms)} VM(s) of {me} as the model says",
                       planned=lambda c: f"would change VM(s) {', '.join(sorted(c))}",
                       done=lambda c: f"changed VM(s) {', '.join(sorted(c))}")
