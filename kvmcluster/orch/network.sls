# -*- coding: utf-8 -*-
# vim: ft=sls
# Apply kvmcluster, then confirm each node's network change from new connections at the
# node's model address: for changes a node cannot confirm itself (re-addressing,
# network:confirm: manual).
#
#   salt-run state.orchestrate kvmcluster.orch.network                          # salt-master
#   salt-run state.orchestrate kvmcluster.orch.network pillar='{"ssh": true}'   # salt-ssh roster
#   pillar: target (default '*'), tgt_type (default glob), ssh (default false)
{%- set tgt = salt["pillar.get"]("target", "*") %}
{%- set tgt_type = salt["pillar.get"]("tgt_type", "glob") %}
{%- set ssh = salt["pillar.get"]("ssh", False) %}

kvmcluster-orch-network-applied:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: {{ tgt_type }}
    - sls: kvmcluster
    - ssh: {{ ssh | json }}

# No requisite on the apply: a node whose apply failed elsewhere still has its network
# change confirmed (confirm only keeps a transaction that passed the node's local check).
kvmcluster-orch-network-confirmed:
  salt.runner:
    - name: kvmcluster.confirm
    - tgt: {{ tgt | json }}
    - tgt_type: {{ tgt_type }}
    - ssh: {{ ssh | json }}
    - order: last
