# -*- coding: utf-8 -*-
# vim: ft=sls
# The VMs of the model that belong on this node (kvmcluster:vms:<vm>:node): cloned from
# their golden image on the secondary storage into the primary pool, on the node's bridge.
# Their static leases and names come from the management node(s) (kvmcluster.dns).
{%- set tplroot = tpldir.split("/")[0] %}
include:
  - {{ tplroot }}.storage
  - {{ tplroot }}.nfs
  - {{ tplroot }}.network

# The guests' traffic filter (clean-traffic, no DHCP server), before any VM carries it.
kvmcluster-vms-filter-defined:
  kvmcluster_vm.filter_defined:
    - require:
      - kvmcluster_pool: kvmcluster-storage-primary-pool-present

kvmcluster-vms-managed:
  kvmcluster_vm.managed:
    - require:
      - kvmcluster_vm: kvmcluster-vms-filter-defined
      - kvmcluster_pool: kvmcluster-storage-primary-pool-present
      - kvmcluster_pool: kvmcluster-nfs-secondary-pool-present
      - kvmcluster_network: kvmcluster-network-libvirt-network-managed
