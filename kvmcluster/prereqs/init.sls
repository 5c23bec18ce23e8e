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

# A node that cannot be a KVM host stops here, before anything is installed: every other
# state of the formula requires this one (no failhard: other formulas of the highstate run).
kvmcluster-prereqs-pkgs-installed:
  kvmcluster_packages.installed:
    - pkgs: {{ mapdata.pkgs.kvm | json }}
    - hypervisor_only: true
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked

# Onedir (or virtualenv) minions cannot import the OS's python3-libvirt: built with pip.
kvmcluster-prereqs-libvirt-python-present:
  kvmcluster_libvirt.python_binding:
    - build_pkgs: {{ mapdata.pkgs.libvirt_python_build | json }}
    - libvirt_pkg: {{ mapdata.pkgs.libvirt_library }}
    - require:
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed
