"""The backend renderers: complete, parseable by their tools' formats, and a fixpoint (what
they write, read back, renders to itself: the second run has nothing to change)."""
import configparser
import subprocess

import pytest
import yaml

from kvmtestlib import load_module

R = load_module("_modules", "kvmcluster_netrender")

BOND_PORT = {"kind": "bond", "name": "bond0", "slaves": ["eno1", "eno2"], "mode": "802.3ad",
             "miimon": 100, "updelay": 200, "downdelay": 200, "xmit_hash_policy": "layer3+4",
             "lacp_rate": "fast", "mtu": 9000}
NIC_PORT = {"kind": "nic", "name": "eth0", "slaves": [], "mtu": 1500}


def plan(port=BOND_PORT):
    return {"name": "kvm01", "address": "172.30.10.41/24", "ip": "172.30.10.41",
            "gateway": "172.30.10.1", "dns_servers": ["172.30.10.11", "172.30.10.12"],
            "dns_search": ["cluster.example.com"],
            "bridge": {"name": "br0", "mtu": port["mtu"], "stp": False, "forward_delay": 0},
            "port": port, "nics": port["slaves"] or [port["name"]],
            "mac": "52:54:00:aa:bb:01", "nic_macs": ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]}


DEBIAN_INTERFACES = """# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug eno1 eno3
iface eno1 inet static
    address 172.30.10.41/24
    gateway 172.30.10.1
    # dns-* options are implemented by the resolvconf package
    dns-nameservers 172.30.10.11

iface eno3 inet dhcp
"""


def test_ifupdown_takes_the_nics_and_keeps_the_rest():
    out = R.target("ifupdown", plan(), {"/etc/network/interfaces": DEBIAN_INTERFACES})
    main = out["/etc/network/interfaces"]
    assert main.startswith("source /etc/network/interfaces.d/*\n")
    assert "iface eno1" not in main and "172.30.10.41" not in main
    assert "allow-hotplug eno3\n" in main and "iface eno3 inet dhcp" in main
    ours = out["/etc/network/interfaces.d/kvmcluster"]
    for line in ("auto bond0", "    bond-slaves eno1 eno2", "    bond-mode 802.3ad",
                 "    bond-miimon 100", "    bond-updelay 200", "    bond-downdelay 200",
                 "    bond-lacp-rate fast", "    bond-xmit-hash-policy layer3+4",
                 "    mtu 9000", "auto br0", "iface br0 inet static",
                 "    address 172.30.10.41/24", "    gateway 172.30.10.1",
                 "    bridge_ports bond0", "    hwaddress ether 52:54:00:aa:bb:01",
                 "iface eno1 inet manual", "iface eno2 inet manual"):
        assert line + "\n" in ours, line


def test_networkmanager_keyfiles_and_conflicting_profiles():
    current = {
        "/etc/NetworkManager/system-connections/Wired 1.nmconnection":
            "[connection]\nid=Wired 1\ntype=ethernet\ninterface-name=eno1\n",
        "/etc/NetworkManager/system-connections/by-mac.nmconnection":
            "[connection]\nid=by-mac\ntype=ethernet\n[ethernet]\nmac-address=52:54:00:AA:BB:02\n",
        "/etc/NetworkManager/system-connections/wifi.nmconnection":
            "[connection]\nid=wifi\ntype=wifi\ninterface-name=wlan0\n",
    }
    out = R.target("networkmanager", plan(), current)
    nm = "/etc/NetworkManager/system-connections/"
    assert out[nm + "Wired 1.nmconnection"] is None      # bound to a slave by name
    assert out[nm + "by-mac.nmconnection"] is None       # bound to a slave by MAC
    assert nm + "wifi.nmconnection" not in out           # not ours to touch
    files = {p: configparser.ConfigParser(interpolation=None) for p in out if out[p]}
    for p, cp in files.items():
        cp.read_string(out[p])
        assert R.file_mode(p) == 0o600
    br = files[nm + "kvmcluster-br0.nmconnection"]
    assert br["connection"]["type"] == "bridge" and br["bridge"]["mac-address"] == \
        "52:54:00:AA:BB:01"
    assert br["ipv4"]["address1"] == "172.30.10.41/24,172.30.10.1"
    assert br["ipv4"]["dns"] == "172.30.10.11;172.30.10.12;"
    bond = files[nm + "kvmcluster-bond0.nmconnection"]
    assert dict(bond["bond"]) == {"mode": "802.3ad", "miimon": "100", "updelay": "200",
                                  "downdelay": "200", "lacp_rate": "fast",
                                  "xmit_hash_policy": "layer3+4"}
    assert bond["connection"]["master"] == "br0" and bond["ethernet"]["mtu"] == "9000"
    for nic in ("eno1", "eno2"):
        c = files[nm + f"kvmcluster-{nic}.nmconnection"]["connection"]
        assert (c["master"], c["slave-type"]) == ("bond0", "bond")
    # On Debian NM leaves ifupdown's interfaces alone: their stanzas go too.
    out = R.target("networkmanager", plan(), {"/etc/network/interfaces": DEBIAN_INTERFACES})
    assert "iface eno1" not in out["/etc/network/interfaces"]


def test_netplan_document_and_other_files():
    other = {"network": {"version": 2, "ethernets": {"eno1": {"dhcp4": True},
                                                     "eno3": {"dhcp4": True}}}}
    current = {"/etc/netplan/50-cloud-init.yaml": yaml.safe_dump(other),
               "/etc/netplan/01-only.yaml": "network:\n  version: 2\n  ethernets:\n"
                                            "    eno2: {dhcp4: true}\n"}
    out = R.target("netplan", plan(), current)
    assert out["/etc/netplan/01-only.yaml"] is None
    left = yaml.safe_load(out["/etc/netplan/50-cloud-init.yaml"])
    assert left["network"]["ethernets"] == {"eno3": {"dhcp4": True}}
    doc = yaml.safe_load(out["/etc/netplan/60-kvmcluster.yaml"])["network"]
    assert doc["bonds"]["bond0"]["parameters"] == {
        "mode": "802.3ad", "mii-monitor-interval": 100, "up-delay": 200, "down-delay": 200,
        "lacp-rate": "fast", "transmit-hash-policy": "layer3+4"}
    br = doc["bridges"]["br0"]
    assert br["interfaces"] == ["bond0"] and br["addresses"] == ["172.30.10.41/24"]
    assert br["routes"] == [{"to": "default", "via": "172.30.10.1"}]
    assert br["macaddress"] == "52:54:00:aa:bb:01"
    assert set(doc["ethernets"]) == {"eno1", "eno2"}
    assert all(e["mtu"] == 9000 for e in doc["ethernets"].values())


def test_ifcfg_files_read_as_initscripts_reads_them(tmp_path):
    """initscripts sources ifcfg files with the shell: so does this test."""
    out = R.target("ifcfg", plan(), {})
    assert set(out) == {f"/etc/sysconfig/network-scripts/ifcfg-{n}"
                        for n in ("br0", "bond0", "eno1", "eno2")}
    for path, text in out.items():
        f = tmp_path / path.rsplit("/", 1)[1]
        f.write_text(text)
        parsed = R.parse_ifcfg(text)
        shell = subprocess.run(["sh", "-c", f'set -a; . "{f}"; env -0'], capture_output=True,
                               check=True).stdout.decode().split("\0")
        env = dict(kv.split("=", 1) for kv in shell if "=" in kv)
        for k, v in parsed.items():
            assert env[k] == v, (path, k)
        assert parsed["NM_CONTROLLED"] == "no" and parsed["ONBOOT"] == "yes"
        assert parsed["DEVICE"] == path.rsplit("ifcfg-", 1)[1]
    br = R.parse_ifcfg(out["/etc/sysconfig/network-scripts/ifcfg-br0"])
    assert (br["TYPE"], br["IPADDR"], br["PREFIX"], br["GATEWAY"]) == (
        "Bridge", "172.30.10.41", "24", "172.30.10.1")
    assert (br["DNS1"], br["DNS2"], br["MACADDR"]) == ("172.30.10.11", "172.30.10.12",
                                                       "52:54:00:aa:bb:01")
    bond = R.parse_ifcfg(out["/etc/sysconfig/network-scripts/ifcfg-bond0"])
    assert bond["TYPE"] == "Bond" and bond["BRIDGE"] == "br0" and bond["MTU"] == "9000"
    assert bond["BONDING_OPTS"] == ("mode=802.3ad miimon=100 updelay=200 downdelay=200 "
                                    "lacp_rate=fast xmit_hash_policy=layer3+4")
    nic = R.parse_ifcfg(out["/etc/sysconfig/network-scripts/ifcfg-eno1"])
    assert (nic["MASTER"], nic["SLAVE"], nic["TYPE"]) == ("bond0", "yes", "Ethernet")
    with pytest.raises(ValueError, match="unquoted spaces"):
        R.parse_ifcfg("BONDING_OPTS=mode=4 miimon=100\n")


@pytest.mark.parametrize("backend", ["ifupdown", "networkmanager", "netplan", "ifcfg"])
@pytest.mark.parametrize("port", [NIC_PORT, BOND_PORT], ids=["nic", "bond"])
def test_rendering_is_a_fixpoint(backend, port):
    current = {"/etc/network/interfaces": DEBIAN_INTERFACES.replace("eno1", port["name"]
                                                                    if port is NIC_PORT
                                                                    else "eno1")}
    p = plan(port)
    first = R.target(backend, p, current, resolv_managed=True)
    written = dict(current)
    written.update({k: v for k, v in first.items()})
    written = {k: v for k, v in written.items() if v is not None}
    second = R.target(backend, p, written, resolv_managed=True)
    assert {k: v for k, v in second.items() if written.get(k) != v} == {}


def dual(port=NIC_PORT, **kw):
    p = plan(port)
    p.update({"address6": ["fd00:30:10::41/64"], "gateway6": "fd00:30:10::1",
              "ipv6_autoconf": True,
              "routes": [{"family": 4, "dst": "10.99.0.0/24", "gateway": "172.30.10.1",
                          "metric": None},
                         {"family": 6, "dst": "fd00:99::/64", "gateway": "fd00:30:10::1",
                          "metric": 1024}]})
    p.update(kw)
    return p


def test_ipv6_and_routes_in_every_backend():
    ifu = R.target("ifupdown", dual(), {})["/etc/network/interfaces.d/kvmcluster"]
    assert "iface br0 inet6 static\n    address fd00:30:10::41/64\n    gateway fd00:30:10::1\n" \
        in ifu
    assert "    up ip -4 route replace 10.99.0.0/24 via 172.30.10.1 dev br0\n" in ifu
    assert "    up ip -6 route replace fd00:99::/64 via fd00:30:10::1 dev br0 metric 1024\n" in ifu
    auto = R.target("ifupdown", dual(address6=[], gateway6=None), {})
    assert "iface br0 inet6 auto\n" in auto["/etc/network/interfaces.d/kvmcluster"]

    nm = R.target("networkmanager", dual(), {})
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(nm["/etc/NetworkManager/system-connections/kvmcluster-br0.nmconnection"])
    assert dict(cp["ipv6"]) == {"method": "auto", "addr-gen-mode": "eui64",
                                "address1": "fd00:30:10::41/64,fd00:30:10::1",
                                "route1": "fd00:99::/64,fd00:30:10::1,1024"}
    assert cp["ipv4"]["route1"] == "10.99.0.0/24,172.30.10.1"
    off = R.target("networkmanager", dual(address6=[], gateway6=None, ipv6_autoconf=False), {})
    cp.read_string(off["/etc/NetworkManager/system-connections/kvmcluster-br0.nmconnection"])
    assert cp["ipv6"]["method"] == "ignore"  # left to the kernel, never switched off

    doc = yaml.safe_load(R.target("netplan", dual(), {})["/etc/netplan/60-kvmcluster.yaml"])
    br = doc["network"]["bridges"]["br0"]
    assert br["addresses"] == ["172.30.10.41/24", "fd00:30:10::41/64"]
    assert br["accept-ra"] is True and br["ipv6-address-generation"] == "eui64"
    assert br["routes"] == [{"to": "default", "via": "172.30.10.1"},
                            {"to": "::/0", "via": "fd00:30:10::1"},
                            {"to": "10.99.0.0/24", "via": "172.30.10.1"},
                            {"to": "fd00:99::/64", "via": "fd00:30:10::1", "metric": 1024}]

    cfg = R.target("ifcfg", dual(), {})
    br0 = R.parse_ifcfg(cfg["/etc/sysconfig/network-scripts/ifcfg-br0"])
    assert {k: br0[k] for k in ("IPV6INIT", "IPV6_AUTOCONF", "IPV6ADDR", "IPV6_DEFAULTGW")} == {
        "IPV6INIT": "yes", "IPV6_AUTOCONF": "yes", "IPV6ADDR": "fd00:30:10::41/64",
        "IPV6_DEFAULTGW": "fd00:30:10::1"}
    assert cfg["/etc/sysconfig/network-scripts/route-br0"].endswith(
        "10.99.0.0/24 via 172.30.10.1 dev br0\n")
    assert cfg["/etc/sysconfig/network-scripts/route6-br0"].endswith(
        "fd00:99::/64 via fd00:30:10::1 dev br0 metric 1024\n")
    assert R.parse_ifcfg(cfg["/etc/sysconfig/network-scripts/ifcfg-eth0"])["IPV6INIT"] == "no"


UBUNTU_NM_NETPLAN = """network:
  version: 2
  ethernets:
    NM-0f5a1c7e-2d3b-4c1a-9a57-6f1e2b3c4d5e:
      renderer: NetworkManager
      match:
        name: "eth0"
      addresses:
      - "172.30.10.41/24"
      networkmanager:
        uuid: "0f5a1c7e-2d3b-4c1a-9a57-6f1e2b3c4d5e"
        name: "Wired connection 1"
        passthrough:
          connection.interface-name: "eth0"
    NM-1111:
      renderer: NetworkManager
      match:
        name: "eth9"
"""


def test_ubuntu_networkmanager_profiles_stored_by_netplan_are_taken():
    path = "/etc/netplan/90-NM-0f5a1c7e-2d3b-4c1a-9a57-6f1e2b3c4d5e.yaml"
    out = R.target("networkmanager", dual(), {path: UBUNTU_NM_NETPLAN})
    left = yaml.safe_load(out[path])["network"]["ethernets"]
    assert list(left) == ["NM-1111"]  # the profile bound to eth0 goes, eth9's stays
    by_mac = UBUNTU_NM_NETPLAN.replace('name: "eth0"', 'macaddress: "52:54:00:AA:BB:01"') \
        .replace('connection.interface-name: "eth0"', 'connection.autoconnect: "true"')
    out = R.target("networkmanager", dual(), {path: by_mac})
    assert list(yaml.safe_load(out[path])["network"]["ethernets"]) == ["NM-1111"]
