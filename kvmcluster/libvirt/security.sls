# -*- coding: utf-8 -*-
# vim: ft=sls
# QEMU and the pool paths under AppArmor or SELinux, wherever either is active.
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

# Each pool's path before its pool: the fcontext rule exists when the pool state makes the
# directory (and labels it), so libvirtd opens it as virt_image_t from the first run. The
# share's once it is mounted (the server's bind mount is relabelled, a client's NFS mount
# is not); the primary's apart from the share, so that it holds when the share does not.
kvmcluster-libvirt-selinux-managed:
  kvmcluster_security.selinux_contexts:
    - packages: {{ mapdata.pkgs.selinux | json }}
    - role: primary
    - require:
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed
    - require_in:
      - kvmcluster_pool: kvmcluster-storage-primary-pool-present

kvmcluster-libvirt-selinux-share-managed:
  kvmcluster_security.selinux_contexts:
    - packages: {{ mapdata.pkgs.selinux | json }}
    - role: secondary
    - require:
      - kvmcluster_security: kvmcluster-libvirt-selinux-managed
      - kvmcluster_nfs: kvmcluster-nfs-secondary-mounted
    - require_in:
      - kvmcluster_pool: kvmcluster-nfs-secondary-pool-present
