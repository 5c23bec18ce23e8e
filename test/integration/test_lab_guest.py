"""A tiny guest (type qemu: no usable KVM acceleration here) defined with its disk in the
primary pool boots on a node that the formula set up."""
import base64
import json
import shlex

from lab import guest
from lab.report import summarize

GUEST_PY = r"""
import json, sys, time, libvirt
spec = json.load(sys.stdin)
c = libvirt.open("qemu:///system")
pool = c.storagePoolLookupByName("default")
vol_xml = ("<volume><name>tiny.img</name><capacity unit='MiB'>16</capacity>"
           "<target><format type='raw'/></target></volume>")
vol = pool.createXML(vol_xml, 0)
dom = c.defineXML(spec["xml"])
t0 = time.monotonic()
dom.create()
log = ""
while time.monotonic() - t0 < 120:
    try:
        log = open(spec["console"]).read()
    except OSError:
        pass
    if spec["marker"] in log:
        break
    time.sleep(0.5)
print(json.dumps({"seconds": round(time.monotonic() - t0, 1), "console": log[-400:],
                  "disk": vol.path(), "type": dom.XMLDesc(0).split("type='", 1)[1].split("'")[0]}))
"""


def test_tiny_guest_boots_from_the_primary_pool(lab):
    node = "kvm01"
    results, _ = lab.apply()  # the formula's state of the node, whatever ran before
    assert summarize(results[node])["failed"] == 0
    boot = "/var/lib/libvirt/boot"
    lab.ssh(node, f"mkdir -p {boot} && cp /boot/vmlinuz-*-amd64 {boot}/tiny-vmlinuz")
    lab.ssh(node, f"base64 -d > {boot}/tiny-initrd",
            input=base64.b64encode(guest.initrd()).decode())
    console = "/var/log/libvirt/qemu/tiny-console.log"
    xml = guest.domain_xml("tiny", "default", "tiny.img", f"{boot}/tiny-vmlinuz",
                           f"{boot}/tiny-initrd", console)
    res = lab.ssh(node, "python3 -c " + shlex.quote(GUEST_PY),
                  input=json.dumps({"xml": xml, "console": console, "marker": guest.MARKER}))
    out = json.loads(res)
    assert guest.MARKER in out["console"], out
    assert out["disk"] == "/data01/primary/tiny.img"
    assert out["type"] == "qemu"
    print(f"tiny guest on {node}: marker after {out['seconds']}s: "
          f"{out['console'].strip().splitlines()[-1]}")
