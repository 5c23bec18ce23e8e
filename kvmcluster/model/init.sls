# -*- coding: utf-8 -*-
# vim: ft=sls
# Validate the whole cluster from pillar before any other state of the formula runs. Every
# other state of the formula requires it (directly or through the preflight), so an invalid
# model stops kvmcluster on the node and nothing else in its highstate.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

kvmcluster-model-validated:
  kvmcluster_model.validated:
    - parameters: {{ mapdata | json }}
    - order: 1
