"""A naive UDP simultaneous open, with plain sockets: the lab's self-test.

Binds `--bind`, sends a probe to `--peer` every 50 ms for at most `--timeout` seconds, and
reports (one JSON line) whether a probe from the peer arrived and from where. "Naive": it
assumes the peer's NAT kept the peer's port, which holds for a cone NAT and fails for a
symmetric one. A peer `[v6 address]:port` punches over IPv6 (from `[::]:bind`).
"""

import argparse
import json
import socket
import time

TOKEN = b"naive-punch"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", type=int, required=True)
    parser.add_argument("--peer", required=True, help="ip:port or [ip6]:port to punch towards")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    host, port = args.peer.rsplit(":", 1)
    v6 = host.startswith("[")
    peer = (host.strip("[]"), int(port))
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("::" if v6 else "0.0.0.0", args.bind))
    sock.settimeout(0.05)
    deadline = time.monotonic() + args.timeout
    sent, heard_from, acked = 0, None, False
    while time.monotonic() < deadline and not acked:
        sock.sendto(TOKEN + (b"-ack" if heard_from else b""), peer)
        sent += 1
        try:
            data, src = sock.recvfrom(1500)
        except TimeoutError:
            continue
        if data.startswith(TOKEN):
            heard_from = f"[{src[0]}]:{src[1]}" if v6 else f"{src[0]}:{src[1]}"
            acked = data.endswith(b"-ack")
    if heard_from and not acked:  # tell the peer we heard it, once more, before leaving
        sock.sendto(TOKEN + b"-ack", peer)
    print(json.dumps({"received": heard_from is not None, "from": heard_from, "sent": sent}))


if __name__ == "__main__":
    main()
