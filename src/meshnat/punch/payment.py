"""Who pays for the probes of a punch, and how much (pure, no I/O).

Every packet a punch sends goes to an address the peer named. Until the peer proves one (a
packet with the punch's txid arrives from that IP, or a direct connection from it exists) this
node sends there at most 3x the bytes the peer sent over the coordination stream
(`meshnat.traversal.budget`). Birthday probing needs more than that before any proof is
possible, since the endpoint-dependent side's NAT drops everything until a port matches, so
the side that wants probes pays for them up front with `Padding` frames, AutoNAT-v2 style:

- the endpoint-dependent (hard) side pays for the easy side's random-port probes to its IP:
  a third of `birthday_max_probes` datagrams (2048 x 58 bytes / 3 = ~40 KB);
- the endpoint-independent (easy) side pays for the hard side's probes to its endpoint: a third
  of two rounds from `birthday_sockets` sockets (2 x 256 x 58 bytes / 3 = ~10 KB).

The prober never trusts the payer's arithmetic: it sends at most what the bytes it actually
received allow.
"""

from __future__ import annotations

import math
from ipaddress import IPv4Address

from meshnat.punch.messages import MAX_PADDING, MappingHint, Padding, Probe
from meshnat.traversal.budget import AMPLIFICATION_RATIO, udp_wire_bytes
from meshnat.wire import TXID_SIZE, encode, frame_datagram

PROBE_WIRE_BYTES = udp_wire_bytes(len(frame_datagram(encode(Probe(bytes(TXID_SIZE))))),
                                  IPv4Address(0))
"""One punch probe on the wire to an IPv4 address (UDP/IP headers included)."""

HARD_SIDE_ROUNDS = 2
"""Rounds of probes from every hard-side socket the easy side pays for (one to open the
mappings, one against its loss)."""

MAX_PADDING_FRAMES = 16
"""Padding frames a peer may send before its Offer or Sync (16 x 4 KB); more is malformed."""


def hard_side_pays(max_probes: int) -> int:
    """Padding bytes an endpoint-dependent side sends so the easy side may probe up to
    `max_probes` random ports of its IP."""
    return math.ceil(max_probes * PROBE_WIRE_BYTES / AMPLIFICATION_RATIO)


def easy_side_pays(sockets: int) -> int:
    """Padding bytes an endpoint-independent side sends so the hard side may probe it from
    `sockets` sockets, `HARD_SIDE_ROUNDS` times."""
    return math.ceil(sockets * HARD_SIDE_ROUNDS * PROBE_WIRE_BYTES / AMPLIFICATION_RATIO)


def padding_owed(ours: MappingHint, theirs: MappingHint, *, max_probes: int,
                 sockets: int) -> int:
    """What this side pays, knowing both mappings: only birthday probing needs it."""
    hard, easy = MappingHint.ENDPOINT_DEPENDENT, MappingHint.ENDPOINT_INDEPENDENT
    if ours is hard and theirs is easy:
        return hard_side_pays(max_probes)
    if ours is easy and theirs is hard:
        return easy_side_pays(sockets)
    return 0


def padding_frames(txid: bytes, nbytes: int) -> list[Padding]:
    """`Padding` messages carrying at least `nbytes` bytes in all (at most 16 frames)."""
    frames: list[Padding] = []
    while nbytes > 0 and len(frames) < MAX_PADDING_FRAMES:
        size = min(nbytes, MAX_PADDING)
        frames.append(Padding(txid, bytes(size)))
        nbytes -= size
    return frames


def probes_allowed(allowance: int | None, wanted: int) -> int:
    """Birthday probes that fit `allowance` bytes (None: proven, no bound) up to `wanted`."""
    return wanted if allowance is None else min(wanted, allowance // PROBE_WIRE_BYTES)
