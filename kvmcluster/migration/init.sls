# -*- coding: utf-8 -*-
# vim: ft=sls
# The transport of live migrations between hypervisors: over SSH to the cluster's account
# with the cluster's migration key and the peers' known host keys (or libvirt TLS).
# Moving a VM: salt-run kvmcluster.migrate vm=<name> target=<node>.
{%- set tplroot = tpldir.split("/")[0] %}
include:
  - {{ tplroot }}.libvirt

kvmcluster-migration-transport-managed:
  kvmcluster_migration.transport:
    - require:
      # The account (with the key's public half) is there before its key is used.
      - kvmcluster_account: kvmcluster-libvirt-account-present
