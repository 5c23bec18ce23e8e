# -*- coding: utf-8 -*-
# vim: ft=sls
include:
  - .model
  - .prereqs
  - .libvirt
  - .firewall
  - .dns
  - .storage
  - .nfs
  - .network
  - .migration
  - .vms
