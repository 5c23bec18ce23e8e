# -*- coding: utf-8 -*-
# vim: ft=sls
# Carry out the VMs' placement in pillar (kvmcluster:vms:<vm>:node): every VM running on
# another node than its pillar node is migrated live there first (kvmcluster.place), then
# kvmcluster is applied (the VM state never starts a second copy of a VM that answers
# elsewhere).
#
#   salt-run state.orchestrate kvmcluster.orch.vms                          # salt-master
#   salt-run state.orchestrate kvmcluster.orch.vms pillar='{"ssh": true}'   # salt-ssh roster
{%- set ssh = salt["pillar.get"]("ssh", False) %}

kvmcluster-orch-vms-placed:
  salt.runner:
    - name: kvmcluster.place
    - ssh: {{ ssh | json }}

kvmcluster-orch-vms-applied:
  salt.state:
    - tgt: '*'
    - sls: kvmcluster
    - ssh: {{ ssh | json }}
    - require:
      - salt: kvmcluster-orch-vms-placed
