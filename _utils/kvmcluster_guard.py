"""
The traffic filter every guest interface carries: libvirt's ``clean-traffic`` (no MAC, IP or
ARP spoofing, no other layer-2 protocol) and no DHCP server, bound to the VM's MAC and, where
the model knows it, its address. A VM without a static address gets one learned from the
DHCP answers of the management nodes only (``CTRL_IP_LEARNING=dhcp`` and ``DHCPSERVER``).

Pure code: the filter's XML, an interface's ``<filterref>``, and reading one back.
"""
import xml.etree.ElementTree as ET

FILTER = "kvmcluster-guest"
# libvirt's own filter (libvirt-daemon-config-nwfilter, or the EL driver package).
BASE = "clean-traffic"


def filter_name():
    return FILTER


def filter_xml():
    """The ``kvmcluster-guest`` nwfilter: clean-traffic, and a guest never answers as a DHCP
    server (UDP from port 67 leaving it), which clean-traffic alone allows from the guest's
    own address."""
    root = ET.Element("filter", name=FILTER, chain="root")
    ET.SubElement(root, "filterref", filter=BASE)
    rule = ET.SubElement(root, "rule", action="drop", direction="out", priority="-100")
    ET.SubElement(rule, "udp", srcportstart="67", srcportend="67")
    return ET.tostring(root, encoding="unicode")


def wanted(view, vm):
    """The guard of ``vm`` (a VM of the model) on this node's view: ``None`` when the VM's
    ``antispoof`` is off, else its filter's parameters."""
    if not vm.get("antispoof", True):
        return None
    params = []
    if vm.get("ip"):
        params.append(("IP", vm["ip"]))
    else:
        params.append(("CTRL_IP_LEARNING", "dhcp"))
        servers = sorted(n["ip"] for n in view["nodes"].values()
                         if n.get("management") and n.get("ip") and ":" not in n["ip"])
        params += [("DHCPSERVER", s) for s in servers]
    return {"filter": FILTER, "params": params}


def filterref(guard):
    """The ``<filterref>`` element of ``guard`` (``wanted``), or None."""
    if not guard:
        return None
    ref = ET.Element("filterref", filter=guard["filter"])
    for name, value in guard["params"]:
        ET.SubElement(ref, "parameter", name=name, value=value)
    return ref


def read(iface):
    """The guard an ``<interface>`` element carries, in ``wanted``'s terms, or None."""
    ref = iface.find("filterref") if iface is not None else None
    if ref is None:
        return None
    params = [(p.get("name"), p.get("value")) for p in ref.findall("parameter")]
    return {"filter": ref.get("filter"), "params": params}


def label(guard):
    """How ``changes`` shows a guard: the filter and its parameters, or "none"."""
    if not guard:
        return "none"
    return f"{guard['filter']} " + " ".join(f"{k}={v}" for k, v in sorted(guard["params"]))
