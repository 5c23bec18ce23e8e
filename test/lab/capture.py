"""A packet capture for the lab: what crosses the lab switch on some TCP ports, searched
for a marker (run inside the switch's network namespace by ``Capture``).

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


def main(low, high, marker, seconds, out):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
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
    Path(out).write_text(json.dumps(res))


class Capture:
    """The capture above in network namespace ``ns`` while the block runs (bounded)."""

    def __init__(self, ns, ports, marker, out, seconds=600):
        self.argv = ["ip", "netns", "exec", ns, sys.executable, __file__, str(ports[0]),
                     str(ports[1]), marker.encode().hex(), str(seconds), str(out)]
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


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]), float(sys.argv[4]),
         sys.argv[5])
