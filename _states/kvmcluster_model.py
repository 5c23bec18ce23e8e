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
