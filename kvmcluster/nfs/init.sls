# -*- coding: utf-8 -*-
# vim: ft=sls
# Not built yet: this state says so (and fails if the model asks for it).
include:
  - kvmcluster.model

kvmcluster-nfs-pending:
  kvmcluster_model.component_pending:
    - component: nfs
    - require:
      - kvmcluster_model: kvmcluster-model-validated
