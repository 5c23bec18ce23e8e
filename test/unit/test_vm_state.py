"""The VM state over the real kvmcluster_vm module on libvirt's test driver: what a VM was
made with (image, clone, storage) is read back from its metadata, and a model that differs
there stops the run with the pillar key, nothing changed."""
import copy

import pytest

from kvmtestlib import SEED_PILLAR, formula_values, load_module, utils_dunder

pytest.importorskip("libvirt")

from test_vm_module import IMAGE, URI, vmmod  # noqa: E402,F401  (the fixture)

model = load_module("_modules", "kvmcluster_model")
vm_state = load_module("_states", "kvmcluster_vm")
BUILT, _ = model.build(SEED_PILLAR["kvmcluster"], formula_values()["cluster"])
FUNCS = ("describe", "golden", "volume_exists", "capacity", "create_volume", "domain_xml",
         "define", "set_autostart", "start", "stop", "remove", "set_resources",
         "resize_disk", "set_interface", "delete_volume")


def _view():
    """kvm02's view with one small VM; both pools are the test node's one pool."""
    view = model.node_view(BUILT, "kvm02")
    view["storage"]["primary"]["name"] = "default-pool"
    view["storage"]["secondary"]["pool"]["name"] = "default-pool"
    view["images"] = {"gold": dict(IMAGE)}
    vm = dict(view["vms"]["db1"], name="small", image="gold", memory_mb=128, vcpus=1,
              disk_gb=1, disks=[], ip=None, domain_type="qemu", pool="default-pool")
    view["vms"] = {"small": vm}
    return view


@pytest.fixture
def state(vmmod):  # noqa: F811
    box = {"view": _view()}
    vm_state.__salt__ = {f"kvmcluster_vm.{f}": getattr(vmmod, f) for f in FUNCS}
    vm_state.__salt__["kvmcluster_model.current"] = lambda: copy.deepcopy(box["view"])
    vm_state.__salt__["kvmcluster_pool.describe"] = lambda name, uri: {  # noqa: ARG005
        "active": bool(vmmod.conn.storagePoolLookupByName(name).isActive())}
    vmmod.conn.storagePoolCreateXML("<pool type='dir'><name>shared-pool</name><target>"
                                    "<path>/shared-pool</path></target></pool>", 0)
    vm_state.__opts__ = {"test": False}
    vm_state.__utils__ = utils_dunder()
    box["mod"] = vmmod
    return box


def _apply(test=False):
    vm_state.__opts__["test"] = test
    return vm_state.managed("vms", uri=URI)


def test_made_then_converged(state):
    predicted = _apply(test=True)
    made = _apply()
    assert made["result"] is True, made["comment"]
    assert predicted["result"] is None and predicted["changes"] == made["changes"]
    assert made["changes"]["small"]["old"] is None
    again = _apply()
    assert (again["result"], again["changes"]) == (True, {})
    d = state["mod"].describe("small", uri=URI)
    assert (d["image"], d["clone"], d["volumes"][0]["pool"]) == ("gold", "full", "default-pool")


@pytest.mark.parametrize("key,value,made", [
    ("image", "other", "'gold'"),
    ("clone", "linked", "'full'"),
    ("storage", "secondary", "'primary'"),
])
def test_what_a_vm_was_made_with_is_never_changed_in_silence(state, key, value, made):
    assert _apply()["result"] is True
    before = state["mod"].describe("small", uri=URI)
    state["view"]["vms"]["small"][key] = value
    state["view"]["images"]["other"] = dict(IMAGE, name="other")
    if key == "storage":  # the secondary pool is another pool than the VM's disks are in
        state["view"]["storage"]["secondary"]["pool"]["name"] = "shared-pool"
        state["view"]["vms"]["small"]["pool"] = "shared-pool"
    for test in (True, False):
        ret = _apply(test=test)
        assert ret["result"] is False and ret["changes"] == {}, ret
        assert f"kvmcluster:vms:small:{key} is {value!r} but the VM was made with {made}" \
            in ret["comment"], ret["comment"]
        assert "kvm02" in ret["comment"]
    assert state["mod"].describe("small", uri=URI) == before
