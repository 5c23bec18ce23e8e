# -*- coding: utf-8 -*-
# vim: ft=sls
# Validate the whole cluster from pillar before any other state of the formula runs.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

kvmcluster-model-validated:
  kvmcluster_model.validated:
    - parameters: {{ mapdata | json }}
    - order: 1
    - failhard: True
