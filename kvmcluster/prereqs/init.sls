# -*- coding: utf-8 -*-
# vim: ft=sls
# Can this node be a KVM host? Then the KVM, QEMU and libvirt packages of its OS family.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.model

kvmcluster-prereqs-preflight-checked:
  kvmcluster_preflight.checked:
    - require:
      - kvmcluster_model: kvmcluster-model-validated
    # A node that cannot be a KVM host stops here, before anything is installed.
    - failhard: True

kvmcluster-prereqs-pkgs-installed:
  pkg.installed:
    - pkgs: {{ mapdata.pkgs.kvm | json }}
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked
