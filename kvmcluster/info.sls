# -*- coding: utf-8 -*-
# vim: ft=sls
# Report each node's own view (CPU flags, /dev/kvm, libvirt binding, its model entry).
# Changes nothing: salt-ssh '*' state.apply kvmcluster.info
include:
  - kvmcluster.model

kvmcluster-node-info-reported:
  kvmcluster_node.reported:
    - require:
      - kvmcluster_model: kvmcluster-model-validated
