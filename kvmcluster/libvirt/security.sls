# -*- coding: utf-8 -*-
# vim: ft=sls
# Let QEMU reach the pool paths under AppArmor or SELinux, wherever either is active.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.prereqs

kvmcluster-libvirt-apparmor-managed:
  kvmcluster_security.apparmor_paths:
    - path: {{ mapdata.config.apparmor_abstraction }}
    - require:
      - pkg: kvmcluster-prereqs-pkgs-installed

kvmcluster-libvirt-selinux-managed:
  kvmcluster_security.selinux_contexts:
    - require:
      - pkg: kvmcluster-prereqs-pkgs-installed
