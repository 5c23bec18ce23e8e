"""Give a booted node the network backend an operator's node would have.

Every node boots with ifupdown configuring eth0. A node meant to run NetworkManager or
netplan (systemd-networkd) gets that package from the lab repository and its eth0 moved to
it, at the same address, the way such a host is installed: the formula then finds that
backend running and takes eth0 over from it.
"""
import time

from . import net

BACKENDS = ("ifupdown", "networkmanager", "netplan")

_LO_ONLY = "auto lo\niface lo inet loopback\n"


def _nm_script(node):
    keyfile = (
        "[connection]\nid=lab-eth0\ntype=ethernet\ninterface-name=eth0\n\n"
        f"[ipv4]\nmethod=manual\naddress1={node.ip}/{net.PREFIXLEN},{net.GATEWAY}\n"
        f"route1={net.ROUTE4[0]},{net.ROUTE4[1]}\n"
        f"dns={net.MGMT_IP};\n\n[ipv6]\nmethod=manual\n"
        f"address1={net.ip6_of(node.ip)}/{net.PREFIXLEN6},{net.GATEWAY6}\n"
        f"route1={net.ROUTE6[0]},{net.ROUTE6[1]}\naddr-gen-mode=eui64\n"
    )
    return f"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends network-manager >/dev/null
umask 077
printf '%s' '{keyfile}' > /etc/NetworkManager/system-connections/lab-eth0.nmconnection
printf '%s' '{_LO_ONLY}' > /etc/network/interfaces
systemd-run --unit=lab-netprep --collect systemctl restart NetworkManager.service
"""


def _netplan_script(node):
    doc = (
        "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    eth0:\n"
        f'      addresses: [{node.ip}/{net.PREFIXLEN}, "{net.ip6_of(node.ip)}/{net.PREFIXLEN6}"]\n'
        f'      routes: [{{to: default, via: {net.GATEWAY}}}, {{to: "::/0", via: "{net.GATEWAY6}"}},\n'
        f'               {{to: {net.ROUTE4[0]}, via: {net.ROUTE4[1]}}},\n'
        f'               {{to: "{net.ROUTE6[0]}", via: "{net.ROUTE6[1]}"}}]\n'
        f"      nameservers: {{addresses: [{net.MGMT_IP}]}}\n"
    )
    return f"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends netplan.io >/dev/null
umask 077
printf '%s' '{doc}' > /etc/netplan/50-lab.yaml
printf '%s' '{_LO_ONLY}' > /etc/network/interfaces
netplan generate
systemctl enable -q systemd-networkd.service
systemd-run --unit=lab-netprep --collect systemctl restart systemd-networkd.service
"""


def prepare(node, ssh, timeout=240):
    """Switch ``node`` to its backend; ``ssh(command, timeout)`` runs a command on it."""
    if node.backend == "ifupdown":
        return
    script = _nm_script(node) if node.backend == "networkmanager" else _netplan_script(node)
    res = ssh(script, timeout)
    if res.returncode:
        raise RuntimeError(f"{node.name}: switching to {node.backend} failed: "
                           f"{res.stderr}{res.stdout}")
    unit = "NetworkManager.service" if node.backend == "networkmanager" \
        else "systemd-networkd.service"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        res = ssh(f"systemctl is-active {unit} && ip -4 -o addr show dev eth0", 20)
        if res.returncode == 0 and f"{node.ip}/" in res.stdout:
            return
        time.sleep(1)
    raise RuntimeError(f"{node.name}: {unit} did not bring eth0 up at {node.ip} within 60s")
