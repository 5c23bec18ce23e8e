# -*- coding: utf-8 -*-
# vim: ft=sls
# QEMU and the pool paths under AppArmor or SELinux, wherever either is active. After the
# pools exist, so that the directories they create carry the right labels in the first run.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.prereqs
  - {{ tplroot }}.storage
  - {{ tplroot }}.nfs

kvmcluster-libvirt-apparmor-managed:
  kvmcluster_security.apparmor_paths:
    - path: {{ mapdata.config.apparmor_abstraction }}
    - require:
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed

kvmcluster-libvirt-selinux-managed:
  kvmcluster_security.selinux_contexts:
    - packages: {{ mapdata.pkgs.selinux | json }}
    - require:
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed
      - kvmcluster_pool: kvmcluster-storage-primary-pool-present
      - kvmcluster_pool: kvmcluster-nfs-secondary-pool-present
