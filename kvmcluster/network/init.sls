# -*- coding: utf-8 -*-
# vim: ft=sls
# Not built yet: this state says so (and fails if the model asks for it).
include:
  - kvmcluster.model

kvmcluster-network-pending:
  kvmcluster_model.component_pending:
    - component: network
    - require:
      - kvmcluster_model: kvmcluster-model-validated
