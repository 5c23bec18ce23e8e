# -*- coding: utf-8 -*-
# vim: ft=sls
# Shared secondary storage: the NFS export on the model's server node, the mount on every
# node, the secondary pool. Nothing happens when storage:secondary:enabled is false.
#
# One `salt-ssh '*' state.apply kvmcluster` converges the cluster: nodes run in parallel,
# and each client's mount waits (storage:secondary:wait_timeout) while the server installs
# and exports; a server that does not answer at all fails the mount in about 30 s.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.prereqs
  - {{ tplroot }}.libvirt.service
  - {{ tplroot }}.firewall

kvmcluster-nfs-packages-installed:
  kvmcluster_nfs.packages:
    - server_pkgs: {{ mapdata.pkgs.nfs_server | json }}
    - client_pkgs: {{ mapdata.pkgs.nfs_client | json }}
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked

kvmcluster-nfs-export-managed:
  kvmcluster_nfs.exported:
    - exports_file: {{ mapdata.config.exports_file }}
    - service: {{ mapdata.services.nfs_server }}
    - require:
      - kvmcluster_nfs: kvmcluster-nfs-packages-installed
      # Clients reach the export only through the server's firewall.
      - kvmcluster_firewall: kvmcluster-firewall-rules-managed

kvmcluster-nfs-secondary-mounted:
  kvmcluster_nfs.mounted:
    - require:
      - kvmcluster_nfs: kvmcluster-nfs-packages-installed
      - kvmcluster_nfs: kvmcluster-nfs-export-managed

kvmcluster-nfs-secondary-pool-present:
  kvmcluster_pool.present:
    - role: secondary
    - require:
      - kvmcluster_nfs: kvmcluster-nfs-secondary-mounted
      - kvmcluster_libvirt: kvmcluster-libvirt-service-running
      - kvmcluster_libvirt: kvmcluster-libvirt-service-restarted
