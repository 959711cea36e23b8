"""A stock py-libp2p 0.8.1 host (its own Noise and Yamux, no meshnat import), for interop tests.

`serve`: listens on 127.0.0.1 with an echo protocol (read to end of stream, echo, half-close)
and prints `{"peer_id", "addr"}`. `dial ADDR SIZE`: opens an echo stream to ADDR (a meshnat
host), sends SIZE seeded random bytes, half-closes, reads the echo to its end and prints
`{"sent", "received", "match", "muxer"}`. Either runs until stdin closes.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

ECHO = TProtocol("/meshnat-test/echo/1")


async def echo(stream: object) -> None:
    data = bytearray()
    try:
        while True:
            data += await stream.read(65536)  # type: ignore[attr-defined]
    except StreamEOF:
        pass
    for at in range(0, len(data), 65536):
        await stream.write(bytes(data[at:at + 65536]))  # type: ignore[attr-defined]
    await stream.close()  # type: ignore[attr-defined]


async def main(argv: list[str]) -> None:
    key = create_new_key_pair()
    noise = {TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
        key, noise_privkey=create_x25519_key_pair().private_key)}
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = new_host(key_pair=key, sec_opt=noise, listen_addrs=listen)
    async with host.run(listen_addrs=listen):
        host.set_stream_handler(ECHO, echo)
        if argv[0] == "serve":
            print(json.dumps({"peer_id": str(host.get_id()), "addr": str(host.get_addrs()[0])}),
                  flush=True)
        else:
            info = info_from_p2p_addr(multiaddr.Multiaddr(argv[1]))
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [ECHO])
            payload = random.Random(7).randbytes(int(argv[2]))
            for at in range(0, len(payload), 65536):
                await stream.write(payload[at:at + 65536])
            await stream.close()
            received = bytearray()
            try:
                while True:
                    received += await stream.read(65536)
            except StreamEOF:
                pass
            muxer = type(stream.muxed_conn).__module__
            print(json.dumps({"sent": len(payload), "received": len(received), "muxer": muxer,
                              "match": hashlib.sha256(received).digest()
                              == hashlib.sha256(payload).digest()}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
