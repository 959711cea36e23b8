"""Every decoder and datagram entry point meshnat has, with golden seeds: shared by the fuzz
harness (`benchmarks/fuzz_decoders.py`) and the decoder properties (tests/unit).

A target takes bytes and returns an outcome name (`decoded`, `dropped`, `answered`, ...) or
raises. Decoders may raise `RemoteProtocolError` subclasses (each counted by name); datagram
entry points must not raise at all. Anything else is a bug.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import ModuleType

import cbor2
import multiaddr

from meshnat import _libp2p
from meshnat._libp2p import records as envelopes
from meshnat.chat import messages as chat
from meshnat.classify import messages as classify
from meshnat.datagrams import parse_datagram
from meshnat.endpoint import udp_source
from meshnat.errors import RemoteProtocolError
from meshnat.mesh import messages as dialback
from meshnat.punch import messages as punch
from meshnat.records import AddressRecord, sign_record, verify_record
from meshnat.records import messages as records
from meshnat.reflection import messages as reflection
from meshnat.reflection.core import ReflectorCore
from meshnat.rendezvous import messages as rendezvous
from meshnat.traversal import messages as traversal
from meshnat.tunnel import messages as tunnel
from meshnat.wire import DATAGRAM_MAGIC, Message, decode, encode
from meshnat.wire import error_response as errors

SRC = Path(__file__).parents[2] / "src" / "meshnat"
VECTORS = Path(__file__).parents[1] / "vectors"
MESSAGE_MODULES: tuple[ModuleType, ...] = (
    reflection, classify, punch, traversal, tunnel, records, rendezvous, chat, dialback, errors)
"""Every module that defines wire messages (a unit test checks none is missing)."""
NOW = 1_700_000_000


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], str]
    datagram: bool = False
    """A datagram entry point: it must drop bad input, never raise."""
    kind: int | None = None
    """The message type code it decodes, if it decodes one type."""


def message_types() -> list[type[Message]]:
    """Every message class of every protocol: a `TYPE` and `from_fields`, defined there."""
    found: list[type[Message]] = []
    for module in MESSAGE_MODULES:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and hasattr(cls, "TYPE") \
                    and hasattr(cls, "from_fields"):
                found.append(cls)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def _name(cls: type) -> str:
    return f"{cls.__module__.split('.')[-2]}.{cls.__name__}"


def _decoder(cls: type[Message]) -> Callable[[bytes], str]:
    def run(data: bytes) -> str:
        decode(data, cls)
        return "decoded"
    return run


def _parser(cls: type[Message]) -> Callable[[bytes], str]:
    def run(data: bytes) -> str:
        return "dropped" if parse_datagram(data, cls) is None else "decoded"
    return run


def _reflector() -> Callable[[bytes], str]:
    core = ReflectorCore(rate=1e9, burst=10**9, max_keys=16, network_rate=1e9,
                         network_burst=10**9, total_rate=1e9, total_burst=10**9)
    source = udp_source(("198.51.100.7", 4001))
    assert source is not None
    clock = [0.0]

    def run(data: bytes) -> str:
        clock[0] += 1e-3
        return "dropped" if core.answer_datagram(data, source, clock[0]) is None else "answered"
    return run


def _udp_source(data: bytes) -> str:
    """Derive a socket address from the bytes: an IPv4 or IPv6 address and a port, or junk."""
    if len(data) < 3:
        addr: object = (data.decode("latin-1"), 0)
    elif data[0] % 3 == 0:
        addr = (str(IPv4Address(data[1:5].ljust(4, b"\0"))), int.from_bytes(data[-2:], "big"))
    elif data[0] % 3 == 1:
        addr = (str(IPv6Address(data[1:17].ljust(16, b"\0"))),
                int.from_bytes(data[-2:], "big"), 0, 0)
    else:
        addr = (data[1:].decode("latin-1"), data[0])
    return "dropped" if udp_source(addr) is None else "possible"


_KEY: list[object] = []


def identity_key() -> object:
    """One Ed25519 key for the whole run (signing seeds and fuzzed bodies alike)."""
    if not _KEY:
        _KEY.append(_libp2p.load_or_create_key(None).private_key)
    return _KEY[0]


def _sign_and_verify(payload: bytes) -> str:
    """Sign a fuzzed RecordBody with a real key, so verify_record reaches everything behind
    the signature (the body, the peer record inside it)."""
    try:
        envelope = envelopes.seal(identity_key(), payload)  # type: ignore[arg-type]
    except RemoteProtocolError:  # too big to seal: not an input the decoder can get
        return "unsealable"
    verify_record(envelope, now=NOW)
    return "decoded"


def targets() -> list[Target]:
    """Every decoder (each message type alone), each datagram parser, the reflector's datagram
    answer, the UDP source rule, and the signed-record chain."""
    found = [Target(f"decode:{_name(cls)}", _decoder(cls), kind=int(cls.TYPE))
             for cls in message_types()]
    found += [Target(f"datagram:{_name(cls)}", _parser(cls), datagram=True, kind=int(cls.TYPE))
              for cls in DATAGRAM_TYPES]
    found += [Target("datagram:ReflectorCore.answer_datagram", _reflector(), datagram=True),
              Target("datagram:udp_source", _udp_source, datagram=True)]

    def envelope(data: bytes) -> str:
        envelopes.open_envelope(data)
        return "decoded"

    def peer_record(data: bytes) -> str:
        envelopes.decode_peer_record(data)
        return "decoded"

    def signed(data: bytes) -> str:
        verify_record(data, now=NOW)
        return "decoded"

    found += _portmap_targets()
    found += [Target("record:open_envelope", envelope),
              Target("record:decode_peer_record", peer_record),
              Target("record:verify_record", signed),
              Target("record:signed_body", _sign_and_verify)]
    return found


def _portmap_targets() -> list[Target]:
    """NAT-PMP and PCP decoders, and the mapping session and gateway probe that read the
    gateway's datagrams (they must drop what they cannot use)."""
    from meshnat.endpoint import Endpoint
    from meshnat.portmap import MappingProtocol, natpmp, pcp
    from meshnat.portmap.probe import GatewayProbe
    from meshnat.portmap.session import MappingSession

    gateway, client = IPv4Address("10.1.0.1"), IPv4Address("10.1.0.10")
    source = Endpoint(gateway, natpmp.SERVER_PORT)

    def decoder(decode_response: Callable[[bytes], object]) -> Callable[[bytes], str]:
        def run(data: bytes) -> str:
            decode_response(data)
            return "decoded"
        return run

    def session(protocol: MappingProtocol) -> Callable[[bytes], str]:
        def run(data: bytes) -> str:
            s = MappingSession(protocol, "udp", 4001, gateway=gateway, client_ip=client,
                               lifetime=7200, nonce=bytes(12), rand=lambda: 0.5,
                               pick_port=lambda: 5000, external_ip=IPv4Address("11.18.0.10"))
            s.start(0.0)
            return "event" if s.receive(data, source, 0.1) else "dropped"
        return run

    def probe(data: bytes) -> str:
        p = GatewayProbe(gateway, client, 0.0, lambda: 0.5)
        p.receive(data, source)
        return "dropped" if p.ignored else "decoded"

    return [Target("portmap:natpmp.decode_response", decoder(natpmp.decode_response)),
            Target("portmap:pcp.decode_response", decoder(pcp.decode_response)),
            Target("datagram:MappingSession(pcp).receive", session(MappingProtocol.PCP),
                   datagram=True),
            Target("datagram:MappingSession(nat-pmp).receive", session(MappingProtocol.NATPMP),
                   datagram=True),
            Target("datagram:GatewayProbe.receive", probe, datagram=True)]


PORTMAP_SEEDS = (
    "00800000000001f20b120032",                  # NAT-PMP external address (miniupnpd)
    "00810000000001f2115c115c00000078",          # NAT-PMP UDP mapping (miniupnpd)
    "0080000100000010",                          # NAT-PMP "unsupported version" to PCP
    "02800000000000000000007b" + "00" * 12,     # PCP ANNOUNCE answer, epoch 123
    "0281000000001c20000003e8" + "00" * 12 + "00" * 12 + "11000000" + "0fa10fa1"
    + "00" * 10 + "ffff0b12000a",                # PCP MAP answer
)


DATAGRAM_TYPES: tuple[type[Message], ...] = (
    reflection.ObserveRequest, reflection.ObserveResponse, punch.Probe, traversal.Probe,
    classify.ProbeDatagram)
"""What arrives by datagram (grep parse_datagram / unframe_datagram in src/meshnat)."""


def golden_frames() -> list[bytes]:
    return [bytes.fromhex(p.read_text().strip()) for p in sorted(VECTORS.glob("*.hex"))]


def _retyped(frames: list[bytes], cls: type[Message]) -> list[bytes]:
    """Every golden frame with its envelope's type set to `cls`'s: other messages' fields,
    so that `cls.from_fields` meets many shapes."""
    out = []
    for frame in frames:
        item = cbor2.loads(frame)
        item[1] = int(cls.TYPE)
        out.append(cbor2.dumps(item))
    return out


def seeds(all_targets: list[Target]) -> dict[str, list[bytes]]:
    """Golden seeds per target: the frames of its own type (and every other frame retyped to
    it), framed as datagrams for datagram targets; real signed records for the record chain."""
    frames = golden_frames()
    by_type = {cls: [f for f in frames if _decodes(f, cls)] + _retyped(frames, cls)
               for cls in message_types()}
    key = identity_key()
    peer = _libp2p.ID.from_pubkey(key.get_public_key())  # type: ignore[attr-defined]
    addrs = (multiaddr.Multiaddr("/ip4/198.18.0.20/tcp/4001"),
             multiaddr.Multiaddr("/ip4/198.18.0.20/udp/4001/quic-v1"))
    record = AddressRecord(peer_id=peer, seq=5, addrs=addrs, issued_at=NOW, ttl=600,
                           services=("chat",), name="alice")
    signed = sign_record(key, record).data  # type: ignore[arg-type]
    peer_record = envelopes.encode_peer_record(peer, 5, addrs)
    body = encode(records.RecordBody(bytes(16), peer_record, NOW, 600, services=("chat",),
                                     name="alice"))
    padded = encode(reflection.ObserveRequest(bytes(16), bytes(reflection.REQUEST_PADDING)))
    out: dict[str, list[bytes]] = {
        f"decode:{_name(cls)}": group for cls, group in by_type.items()}
    out |= {f"datagram:{_name(cls)}": [DATAGRAM_MAGIC + f for f in by_type[cls]]
            for cls in DATAGRAM_TYPES}
    out |= {"datagram:ReflectorCore.answer_datagram": [DATAGRAM_MAGIC + padded]
            + [DATAGRAM_MAGIC + f for f in frames],
            "datagram:udp_source": [b"\x00\xc6\x33\x64\x07\x0f\xa1",
                                    b"\x01\x20\x01\x0d\xb8" + bytes(12) + b"\x01\xbb",
                                    b"\x02127.0.0.1"],
            "record:open_envelope": [signed], "record:verify_record": [signed],
            "record:decode_peer_record": [peer_record], "record:signed_body": [body]}
    portmap = [bytes.fromhex(h) for h in PORTMAP_SEEDS]
    out |= {name: portmap for name in (
        "portmap:natpmp.decode_response", "portmap:pcp.decode_response",
        "datagram:MappingSession(pcp).receive", "datagram:MappingSession(nat-pmp).receive",
        "datagram:GatewayProbe.receive")}
    missing = {t.name for t in all_targets} - set(out)
    assert not missing, f"no seeds for {missing}"
    return out


def _decodes(frame: bytes, cls: type[Message]) -> bool:
    try:
        decode(frame, cls)
    except RemoteProtocolError:
        return False
    return True


def messages_modules_on_disk() -> set[str]:
    """Module names of every `messages.py` under src/meshnat, plus wire/error_response."""
    names = {f"meshnat.{p.parent.name}.messages" for p in SRC.glob("*/messages.py")}
    return names | {"meshnat.wire.error_response"}
