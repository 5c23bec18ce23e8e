"""A tiny guest (type qemu: no usable KVM acceleration here) defined with its disk in the
primary pool boots on a node that the formula set up."""
import base64
import json
import shlex

from lab import guest
from lab.report import summarize


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
    res = lab.ssh(node, "python3 -c " + shlex.quote(guest.BOOT_PY),
                  input=json.dumps({"xml": xml, "console": console, "marker": guest.MARKER,
                                    "volume": {"pool": "default", "name": "tiny.img"}}))
    out = json.loads(res)
    assert guest.MARKER in out["console"], out
    assert out["disk"] == "/data01/primary/tiny.img"
    assert out["type"] == "qemu"
    print(f"tiny guest on {node}: marker after {out['seconds']}s: "
          f"{out['console'].strip().splitlines()[-1]}")
