# -*- coding: utf-8 -*-
# vim: ft=sls
# Where firewalld runs: the ports this node's roles need, from the nodes that need them.
{%- set tplroot = tpldir.split("/")[0] %}
include:
  - {{ tplroot }}.prereqs

kvmcluster-firewall-rules-managed:
  kvmcluster_firewall.managed:
    - name: firewalld
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked
