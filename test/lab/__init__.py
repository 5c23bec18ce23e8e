"""A rack on one machine: nodes in network namespaces on an isolated lab bridge.

The lab stands in for an operator's hypervisor nodes and management node so that the
formula is proven over real salt-ssh, real systemd and real libvirtd.
"""
