"""Packet captures for the lab, run inside a lab namespace by ``Capture``/``PortWatch``,
and a DHCP client that lists the servers that answer (``dhcp_offers``).

As a script: ``capture.py <low> <high> <marker-hex> <seconds> <out.json>`` captures every
IPv4 TCP segment with a source or destination port in [low, high] on all interfaces of
the namespace (AF_PACKET), until SIGTERM or ``seconds``, and writes ``{"packets",
"bytes", "found", "flows", "tls_flows"}``: ``found`` counts the marker in each flow's
payload (a marker split across segments included), ``tls_flows`` the flows whose first
payload byte is a TLS handshake record."""
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ETH_P_ALL = 0x0003


SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_RCVBUFFORCE = 33  # Linux; Python's socket module does not name it


def _big_buffer(sock):
    """A receive buffer that holds a burst of a migration (root may exceed rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)


def _drops(sock):
    """Frames the kernel dropped for this socket (its buffer was full)."""
    try:
        return struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
    except OSError:
        return None


def main(low, high, marker, seconds, out, iface=""):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    _big_buffer(sock)
    if iface:
        sock.bind((iface, 0))
    sock.settimeout(0.5)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    tails, first, seen = {}, {}, set()
    res = {"packets": 0, "bytes": 0, "found": 0}
    deadline = time.monotonic() + seconds
    print("capturing", flush=True)
    while not stop["now"] and time.monotonic() < deadline:
        try:
            frame = sock.recv(262144)
        except socket.timeout:
            continue
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 6:  # TCP
            continue
        tcp = 14 + ihl
        sport, dport = struct.unpack("!HH", frame[tcp:tcp + 4])
        if not (low <= sport <= high or low <= dport <= high):
            continue
        total = struct.unpack("!H", frame[16:18])[0]
        data = frame[tcp + (frame[tcp + 12] >> 4) * 4:14 + total]
        if not data:
            continue
        # The same segment is seen on the way in and out of the switch: counted once.
        key = (frame[26:34], sport, dport, frame[tcp + 4:tcp + 8], len(data))
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > 2_000_000:
            seen.clear()
        flow = (frame[26:34], sport, dport)
        res["packets"] += 1
        res["bytes"] += len(data)
        first.setdefault(flow, data[0])
        window = tails.get(flow, b"") + data
        res["found"] += window.count(marker)
        tails[flow] = window[-(len(marker) - 1):]
    res["flows"] = len(first)
    res["tls_flows"] = sum(1 for b in first.values() if b == 0x16)
    res["dropped"] = _drops(sock)
    Path(out).write_text(json.dumps(res))


def watch_port(iface, node_ip, node_mac, seconds, out):
    """What comes in from ``iface`` (a switch port) in the name of another node: frames
    with its MAC, ARP claiming its address, IPv4 from its address (by protocol and port),
    and DHCP server answers (UDP from port 67)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    _big_buffer(sock)
    sock.bind((iface, 0))
    sock.settimeout(0.5)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    mac, ip = bytes.fromhex(node_mac.replace(":", "")), socket.inet_aton(node_ip)
    res = {"frames": 0, "node_mac": 0, "arp_claims": 0, "ip_from": {}, "dhcp_server": 0}
    deadline = time.monotonic() + seconds
    print("capturing", flush=True)
    while not stop["now"] and time.monotonic() < deadline:
        try:
            frame, addr = sock.recvfrom(262144)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING or len(frame) < 42:
            continue  # towards the port, not from it
        res["frames"] += 1
        res["node_mac"] += frame[6:12] == mac
        kind = frame[12:14]
        if kind == b"\x08\x06" and frame[28:32] == ip:
            res["arp_claims"] += 1
        elif kind == b"\x08\x00":
            proto, ihl = frame[23], (frame[14] & 0x0F) * 4
            l4 = 14 + ihl
            sport, dport = struct.unpack("!HH", frame[l4:l4 + 4]) if proto in (6, 17) \
                else (0, 0)
            if frame[26:30] == ip:
                what = {1: "icmp", 6: f"tcp/{dport}", 17: f"udp/{dport}"}.get(proto, str(proto))
                res["ip_from"][what] = res["ip_from"].get(what, 0) + 1
            if proto == 17 and sport == 67:
                res["dhcp_server"] += 1
    Path(out).write_text(json.dumps(res))


def dhcp_offers(iface, seconds, out):
    """DHCPDISCOVERs (broadcast on ``iface``, a random client MAC) every second for
    ``seconds``; the servers whose offers came back (their server identifier), with
    counts."""
    import os  # noqa: PLC0415
    import random  # noqa: PLC0415

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    # A limited broadcast leaves by the device named (no default route needed).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(0.3)
    chaddr = bytes([0x02]) + os.urandom(5)
    xid = random.getrandbits(32)
    packet = (struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                          b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, chaddr + b"\0" * 10,
                          b"\0" * 64, b"\0" * 128)
              + b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff")
    servers = {}
    end = time.monotonic() + seconds
    next_send = 0.0
    while time.monotonic() < end:
        if time.monotonic() >= next_send:
            sock.sendto(packet, ("255.255.255.255", 67))
            next_send = time.monotonic() + 1
        try:
            data, src = sock.recvfrom(4096)
        except socket.timeout:
            continue
        if len(data) < 240 or data[0] != 2 or struct.unpack("!I", data[4:8])[0] != xid:
            continue
        opts, i, sid = data[240:], 0, src[0]
        while i < len(opts) and opts[i] != 255:
            if opts[i] == 0:
                i += 1
                continue
            if opts[i] == 54 and opts[i + 1] == 4:
                sid = socket.inet_ntoa(opts[i + 2:i + 6])
            i += 2 + opts[i + 1]
        servers[sid] = servers.get(sid, 0) + 1
    Path(out).write_text(json.dumps(servers))


def offers(ns, seconds, out, iface="eth0"):
    """``dhcp_offers`` run in namespace ``ns``: ``{server identifier: offers}``."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "offers",
                           iface, str(seconds), str(out)], capture_output=True, text=True,
                          timeout=seconds + 30, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(Path(out).read_text())


class Capture:
    """The capture above in network namespace ``ns`` while the block runs (bounded)."""

    def __init__(self, ns, ports, marker, out, seconds=600, iface=""):
        self.argv = ["ip", "netns", "exec", ns, sys.executable, __file__, str(ports[0]),
                     str(ports[1]), marker.encode().hex(), str(seconds), str(out), iface]
        self.out, self.result, self.proc = Path(out), None, None

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "capturing"
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.result = json.loads(self.out.read_text()) if self.out.exists() else None


class PortWatch(Capture):
    """``watch_port`` in namespace ``ns`` while the block runs (bounded)."""

    def __init__(self, ns, iface, node_ip, node_mac, out, seconds=600):  # noqa: PLW0231
        self.argv = ["ip", "netns", "exec", ns, sys.executable, __file__, "port", iface,
                     node_ip, node_mac, str(seconds), str(out)]
        self.out, self.result, self.proc = Path(out), None, None


if __name__ == "__main__":
    if sys.argv[1] == "port":
        watch_port(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
    elif sys.argv[1] == "offers":
        dhcp_offers(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    else:
        main(int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]),
             float(sys.argv[4]), sys.argv[5], sys.argv[6] if len(sys.argv) > 6 else "")
