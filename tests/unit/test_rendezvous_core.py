"""The rendezvous point's registrations on virtual time (`rendezvous.core`)."""

from __future__ import annotations

from meshnat.rendezvous.core import RendezvousConfig, RendezvousCore
from meshnat.rendezvous.messages import Discover, Register, Registered
from meshnat.wire.error_response import ErrorCode, ErrorResponse

PEER, NETWORK = "peer-a", "192.0.2.0/24"


def register(core: RendezvousCore, ttl: int, *, record_left: float,
             now: float) -> Registered | ErrorResponse:
    return core.register(PEER, Register(b"\x01" * 8, "net", b"record", ttl), record_peer=PEER,
                         record_seq=1, record_left=record_left, now=now, network=NETWORK)


def found(core: RendezvousCore, now: float) -> int:
    return len(core.discover(Discover(b"\x02" * 8, "net", b""), now).records)


def test_a_registration_lasts_its_granted_ttl_and_not_a_moment_longer() -> None:
    core = RendezvousCore(RendezvousConfig(min_ttl=1, max_ttl=3))
    answer = register(core, 600, record_left=600, now=100.0)
    assert isinstance(answer, Registered) and answer.ttl == 3  # capped by max_ttl
    assert found(core, 102.999) == 1
    assert found(core, 103.0) == 0
    assert core.registrations() == 0


def test_the_record_s_own_expiry_caps_the_registration() -> None:
    core = RendezvousCore(RendezvousConfig(min_ttl=1))
    answer = register(core, 600, record_left=5.7, now=0.0)
    assert isinstance(answer, Registered) and answer.ttl == 5
    assert found(core, 4.9) == 1 and found(core, 5.0) == 0


def test_a_record_expiring_within_a_second_is_refused() -> None:
    core = RendezvousCore(RendezvousConfig(min_ttl=1))
    answer = register(core, 600, record_left=0.9, now=0.0)
    assert isinstance(answer, ErrorResponse) and answer.code is ErrorCode.INVALID_RECORD
    assert core.registrations() == 0
