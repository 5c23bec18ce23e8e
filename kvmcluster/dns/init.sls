# -*- coding: utf-8 -*-
# vim: ft=sls
# DNS and DHCP for nodes and guests, served by dnsmasq on the management node(s).
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
include:
  - {{ tplroot }}.prereqs
  - {{ tplroot }}.firewall

kvmcluster-dns-served:
  kvmcluster_dns.served:
    - packages: {{ mapdata.pkgs.dns | json }}
    - service: {{ mapdata.services.dns }}
    - require:
      - kvmcluster_preflight: kvmcluster-prereqs-preflight-checked
      # Nodes and guests reach it only through the management node's firewall.
      - kvmcluster_firewall: kvmcluster-firewall-rules-managed
