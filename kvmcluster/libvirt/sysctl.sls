# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.prereqs

kvmcluster-libvirt-sysctl-managed:
  kvmcluster_sysctl.dropin_managed:
    - path: {{ mapdata.config.sysctl_dropin }}
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked
