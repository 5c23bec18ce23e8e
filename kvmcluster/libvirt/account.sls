# -*- coding: utf-8 -*-
# vim: ft=sls
# The management account on every node: SSH keys, password-less sudo (checked with visudo
# before it is installed), the libvirt and kvm groups on hypervisors.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.prereqs

kvmcluster-libvirt-account-present:
  kvmcluster_account.present:
    - packages: {{ mapdata.pkgs.account | json }}
    - require:
      # The libvirt and kvm groups come with the packages.
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed
