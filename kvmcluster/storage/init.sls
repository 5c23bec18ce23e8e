# -*- coding: utf-8 -*-
# vim: ft=sls
# The primary pool: a dir pool on node-local storage, the default pool, same path everywhere.
include:
  - kvmcluster.libvirt.service

kvmcluster-storage-primary-pool-present:
  kvmcluster_pool.present:
    - role: primary
    - require:
      - kvmcluster_libvirt: kvmcluster-libvirt-service-running
      - kvmcluster_libvirt: kvmcluster-libvirt-service-restarted
