# -*- coding: utf-8 -*-
# vim: ft=sls
# The management account in the libvirt and kvm groups, with its SSH keys.
include:
  - kvmcluster.prereqs

kvmcluster-libvirt-account-present:
  kvmcluster_account.present:
    - require:
      # The libvirt and kvm groups come with the packages.
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed
