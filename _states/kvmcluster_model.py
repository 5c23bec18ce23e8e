"""
State that validates the kvmcluster pillar for the whole cluster before anything else runs.

Its failure stops the run (the SLS sets ``failhard``): no host is touched with a bad model.
"""

__virtualname__ = "kvmcluster_model"


def __virtual__():
    return __virtualname__


def validated(name, parameters):
    """
    Build the cluster model from pillar ``kvmcluster`` over ``parameters`` (the formula's
    map.jinja data) and keep this node's view of it for the other kvmcluster states.

    name
        Any; reported back.
    parameters
        The formula parameters from map.jinja; ``parameters['cluster']`` are the defaults.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        view = __salt__["kvmcluster_model.load"](parameters)
    except Exception as exc:  # pylint: disable=broad-except
        ret["result"] = False
        ret["comment"] = str(exc)
        return ret
    me = view["self"]
    ret["comment"] = (f"cluster model valid: {len(view['nodes'])} node(s); this node is "
                      f"{me['name']} at {me.get('address')} on {me['bridge']['name']}")
    return ret


# What each not-yet-built component of the model would manage, and when the model asks for it.
_PENDING = {
    "network": ("the bridge takeover (kvmcluster:bridge, nodes:*:nic/bond)", lambda v: False),
}


def component_pending(name, component):
    """
    Say plainly that ``component`` is not managed by this version of the formula: fail when
    the model asks for it (so a run never looks done when it is not), warn otherwise.

    name
        Any; reported back.
    component
        ``network``.
    """
    what, asked = _PENDING[component]
    view = __salt__["kvmcluster_model.current"]()
    msg = f"{what} is not managed by this version of kvmcluster; nothing was changed"
    if asked(view):
        return {"name": name, "changes": {}, "result": False, "comment": msg}
    return {"name": name, "changes": {}, "result": True, "comment": msg}
