# -*- coding: utf-8 -*-
# vim: ft=sls
# libvirtd.conf key by key, qemu.conf's migration ports, socket group/mode drop-ins, no TCP listener, TLS only if asked.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
{%- set lv = mapdata.libvirt %}
include:
  - {{ tplroot }}.prereqs

kvmcluster-libvirt-config-managed:
  kvmcluster_libvirt.config_managed:
    - path: {{ lv.config }}
    - rw_sockets: {{ lv.rw_sockets | json }}
    - ro_sockets: {{ lv.ro_sockets | json }}
    - env_file: {{ lv.env_file }}
    - env: {{ lv.env | json }}
    - qemu_config: {{ lv.qemu_config }}
    - require:
      - kvmcluster_packages: kvmcluster-prereqs-pkgs-installed

kvmcluster-libvirt-sockets-managed:
  kvmcluster_libvirt.sockets_managed:
    - tcp_socket: {{ lv.tcp_socket }}
    - tls_socket: {{ lv.tls_socket }}
    - require:
      - kvmcluster_libvirt: kvmcluster-libvirt-config-managed
