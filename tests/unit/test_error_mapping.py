"""py-libp2p and trio failures map onto meshnat's errors in one place, and only once."""

from __future__ import annotations

import pytest
import trio
from libp2p.io.exceptions import MessageTooLarge as Libp2pTooLarge
from libp2p.network.stream.exceptions import StreamReset

from meshnat import _libp2p
from meshnat.errors import MessageTooLarge, PeerTimeout, PeerUnavailable


@pytest.mark.parametrize(("raised", "expected"), [
    (trio.TooSlowError(), PeerTimeout),
    (StreamReset("reset"), PeerUnavailable),
    (trio.BrokenResourceError(), PeerUnavailable),
    (ConnectionRefusedError(), PeerUnavailable),
    (Libp2pTooLarge("big"), MessageTooLarge),
])
def test_foreign_errors_become_meshnat_errors(raised: Exception, expected: type) -> None:
    with pytest.raises(expected), _libp2p.map_peer_errors("stage", 1.0):
        raise raised


def test_an_already_mapped_timeout_is_not_remapped_by_an_outer_layer() -> None:
    # PeerTimeout is a TimeoutError, hence an OSError: the outer mapping must leave it alone
    with (
        pytest.raises(PeerTimeout) as caught,
        _libp2p.map_peer_errors("outer"),
        _libp2p.map_peer_errors("inner", 2.0),
    ):
        raise trio.TooSlowError()
    assert caught.value.stage == "inner"


def test_one_real_error_is_unwrapped_from_nested_groups() -> None:
    inner = PeerUnavailable("gone")
    with pytest.raises(PeerUnavailable) as caught, _libp2p.single_exception():
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    assert caught.value is inner
    with pytest.raises(ExceptionGroup), _libp2p.single_exception():
        raise ExceptionGroup("two", [ValueError(), KeyError()])


def test_quic_errors_have_their_own_root_and_are_mapped_too() -> None:
    from libp2p.transport.quic.exceptions import QUICConnectionClosedError

    with pytest.raises(PeerUnavailable), _libp2p.map_peer_errors("stage"):
        raise QUICConnectionClosedError("Connection is closed")
