"""A UDP echo server and a paced prober, plain sockets only, for measuring the lab's WAN.

    udp_probe.py serve PORT                          echo every datagram; prints {"ready": true}
    udp_probe.py probe ADDR:PORT COUNT INTERVAL WAIT   send COUNT numbered probes INTERVAL s apart,
                                                     collect echoes until WAIT s after the last;
                                                     prints {"sent", "rtts_ms", "order"}
    udp_probe.py whoami PORT                         answer every datagram with its source
                                                     "ip:port"; prints {"ready": true}
    udp_probe.py ask ADDR:PORT BIND                  from port BIND, ask a `whoami` server (5
                                                     tries, 1 s apart); prints {"mapped": "ip:port"}
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time


def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # dual stack: IPv4 and IPv6
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        data, addr = sock.recvfrom(2048)
        sock.sendto(data, addr)


def whoami(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        _, addr = sock.recvfrom(2048)
        sock.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)


def ask(target: str, bind: int) -> None:
    ip, port = target.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", bind))
    sock.settimeout(1.0)
    for _ in range(5):
        sock.sendto(b"?", (ip, int(port)))
        try:
            print(json.dumps({"mapped": sock.recv(2048).decode()}))
            return
        except TimeoutError:
            continue
    sys.exit("no answer")


def probe(target: str, count: int, interval: float, wait: float) -> None:
    ip, port = target.rsplit(":", 1)
    v6 = ip.startswith("[")
    ip = ip.strip("[]")
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect((ip, int(port)))
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}
    order: list[int] = []
    start = time.monotonic()
    end = start + count * interval + wait
    while (now := time.monotonic()) < end:
        if len(sent_at) < count and now >= start + len(sent_at) * interval:
            seq = len(sent_at)
            sent_at[seq] = now
            sock.send(struct.pack("!I", seq) + bytes(60))
            continue
        due = start + len(sent_at) * interval if len(sent_at) < count else end
        ready, _, _ = select.select([sock], [], [], max(0.0, min(due, end) - now))
        if ready:
            (seq,) = struct.unpack("!I", sock.recv(2048)[:4])
            rtts[seq] = (time.monotonic() - sent_at[seq]) * 1e3
            order.append(seq)
    print(json.dumps({"sent": len(sent_at), "rtts_ms": [rtts[s] for s in order],
                      "order": order}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif sys.argv[1] == "whoami":
        whoami(int(sys.argv[2]))
    elif sys.argv[1] == "ask":
        ask(sys.argv[2], int(sys.argv[3]))
    else:
        probe(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
