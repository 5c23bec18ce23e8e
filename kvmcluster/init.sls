# -*- coding: utf-8 -*-
# vim: ft=sls
include:
  - .model
  - .prereqs
  - .libvirt
  - .firewall
  - .storage
  - .nfs
  - .network
