# -*- coding: utf-8 -*-
# vim: ft=sls
include:
  - .model
  - .prereqs
  - .libvirt
  - .storage
  - .nfs
  - .network
