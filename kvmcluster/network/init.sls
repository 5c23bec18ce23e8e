# -*- coding: utf-8 -*-
# vim: ft=sls
# The bridge takeover (one transaction with a dead-man switch) and the guests' libvirt
# network on the bridge. Everything node-specific comes from the validated model on the node.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.model
  - {{ tplroot }}.prereqs
  - {{ tplroot }}.libvirt

# Installed once, before any transaction: a node that restarts while a change is
# unconfirmed undoes it before its network comes up.
kvmcluster-network-bootguard-installed:
  kvmcluster_network.boot_guard:
    - name: boot-guard
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked

kvmcluster-network-bridge-managed:
  kvmcluster_network.bridged:
    - name: bridge
    - packages: {{ mapdata.pkgs.network | json }}
    - require:
      - kvmcluster_model: kvmcluster-model-validated
      - kvmcluster_network: kvmcluster-network-bootguard-installed

kvmcluster-network-libvirt-network-managed:
  kvmcluster_network.libvirt_network:
    - name: libvirt-network
    - require:
      - kvmcluster_network: kvmcluster-network-bridge-managed
      - sls: {{ tplroot }}.libvirt
