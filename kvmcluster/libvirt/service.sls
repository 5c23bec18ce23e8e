# -*- coding: utf-8 -*-
# vim: ft=sls
# The daemon and its sockets enabled and active; one restart when the config changed.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
{%- set lv = mapdata.libvirt %}
include:
  - .config

kvmcluster-libvirt-service-running:
  kvmcluster_libvirt.running:
    - service: {{ lv.service }}
    - sockets: {{ lv.sockets | json }}
    - started_by_package: {{ lv.started_by_package | json }}
    - require:
      - kvmcluster_libvirt: kvmcluster-libvirt-sockets-managed
      - kvmcluster_libvirt: kvmcluster-prereqs-libvirt-python-present

kvmcluster-libvirt-service-restarted:
  kvmcluster_libvirt.restarted:
    - service: {{ lv.service }}
    - sockets: {{ lv.sockets | json }}
    - onchanges:
      - kvmcluster_libvirt: kvmcluster-libvirt-config-managed
    - require:
      - kvmcluster_libvirt: kvmcluster-libvirt-service-running
