"""State that reports a node's own view (``kvmcluster_node.info``) without changing anything."""
import json

__virtualname__ = "kvmcluster_node"


def __virtual__():
    return __virtualname__


def reported(name):
    """
    Put ``kvmcluster_node.info`` for this node, with its validated model entry, in the
    comment. Never changes anything.

    name
        Any; reported back.
    """
    facts = __salt__["kvmcluster_node.info"](__salt__["kvmcluster_model.current"]()["self"])
    return {"name": name, "result": True, "changes": {},
            "comment": json.dumps(facts, indent=2, sort_keys=True)}
