"""A plain py-libp2p 0.8.1 node (no meshnat) running its own DCUtR: the punch baseline.

Modes: `relay` (circuit relay v2 hop), `listener` (reserves on the relay, runs DCUtR, echoes)
and `dialer` (reaches the listener over a circuit, calls `initiate_hole_punch`, echoes over the
direct connection). Each prints one JSON line. Used by bench_punch_lab.py inside the lab only.
"""

from __future__ import annotations

import argparse
import json

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

ECHO = TProtocol("/bench/echo/1.0.0")
LIMITS = RelayLimits(duration=600, data=1 << 30, max_circuit_conns=64, max_reservations=64)


def emit(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


async def echo_handler(stream) -> None:  # type: ignore[no-untyped-def]
    try:
        await stream.write(await stream.read(1024))
        await stream.close()
    except Exception:  # a baseline tool: a broken echo only fails that round
        await stream.reset()


async def main(args: argparse.Namespace) -> None:
    listen = multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001")
    host = new_host(listen_addrs=[listen])
    hop = args.mode == "relay"
    protocol = CircuitV2Protocol(host, limits=LIMITS, allow_hop=hop)
    async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
        if hop:
            host.set_stream_handler(PROTOCOL_ID, protocol._handle_hop_stream)
        host.set_stream_handler(STOP_PROTOCOL_ID, protocol._handle_stop_stream)
        host.set_stream_handler(ECHO, echo_handler)
        async with background_trio_service(protocol):
            roles = RelayRole.HOP | RelayRole.STOP if hop else RelayRole.STOP
            transport = CircuitV2Transport(host, protocol, RelayConfig(roles=roles, limits=LIMITS))
            if hop:
                emit({"event": "ready", "addr": f"/ip4/{args.ip}/tcp/4001/p2p/{host.get_id()}"})
                await trio.sleep_forever()
            relay = info_from_p2p_addr(multiaddr.Multiaddr(args.relay))
            await host.connect(relay)
            dcutr = DCUtRProtocol(host)
            async with background_trio_service(dcutr):
                await dcutr.event_started.wait()
                if args.mode == "listener":
                    stream = await host.new_stream(relay.peer_id, [PROTOCOL_ID])
                    await transport.reserve(stream, relay.peer_id, nursery)
                    emit({"event": "ready", "peer_id": str(host.get_id())})
                    await trio.sleep_forever()
                peer = ID.from_base58(args.peer)
                started = trio.current_time()
                await transport.dial(multiaddr.Multiaddr(
                    f"{args.relay}/p2p-circuit/p2p/{peer}"))
                relayed_at = trio.current_time()
                ok = await dcutr.initiate_hole_punch(peer)
                punched_at = trio.current_time()
                direct = await dcutr._have_direct_connection(peer)
                stream = await host.new_stream(peer, [ECHO])
                await stream.write(b"baseline")
                echoed = await stream.read(1024) == b"baseline"
                emit({"ok": ok, "direct": direct, "echo_ok": echoed,
                      "time_to_path_ms": (relayed_at - started) * 1e3,
                      "time_to_direct_ms": (punched_at - relayed_at) * 1e3,
                      "first_byte_ms": (trio.current_time() - relayed_at) * 1e3})
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("relay", "listener", "dialer"))
    parser.add_argument("--relay")
    parser.add_argument("--peer")
    parser.add_argument("--ip")
    trio.run(main, parser.parse_args())
