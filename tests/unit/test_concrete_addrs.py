"""A host's concrete listen addresses: a wildcard's expansion is reused for a moment, the
listeners themselves are read on every call."""

from __future__ import annotations

from types import SimpleNamespace

import multiaddr
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from meshnat._libp2p import host as host_module
from meshnat._libp2p.host import EXPANSION_LIFETIME, concrete_addrs, endpoint_of
from meshnat.endpoint import Endpoint


class Listener:
    def __init__(self, *addrs: str) -> None:
        self.addrs = [multiaddr.Multiaddr(a) for a in addrs]

    def get_addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        return tuple(self.addrs)


def fake_host(listeners: dict[str, Listener]) -> SimpleNamespace:
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    network = SimpleNamespace(listeners=listeners)
    return SimpleNamespace(get_id=lambda: peer, get_network=lambda: network)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(host_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(host_module, "_expansions", {})
    return now


def test_a_wildcard_is_expanded_once_per_lifetime(monkeypatch: pytest.MonkeyPatch,
                                                  clock: list[float]) -> None:
    interfaces = ["10.0.0.1"]
    calls: list[str] = []

    def expand(bound: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
        calls.append(str(bound))
        return [multiaddr.Multiaddr(f"/ip4/{ip}/udp/4001") for ip in interfaces]

    monkeypatch.setattr(host_module, "expand_wildcard_address", expand)
    host = fake_host({"udp": Listener("/ip4/0.0.0.0/udp/4001/quic-v1")})
    first = concrete_addrs(host)  # type: ignore[arg-type]
    assert [str(a).split("/p2p/")[0] for a in first] == ["/ip4/10.0.0.1/udp/4001/quic-v1"]
    interfaces.append("10.0.0.2")
    clock[0] += EXPANSION_LIFETIME / 2
    assert concrete_addrs(host) == first  # type: ignore[arg-type]
    assert len(calls) == 1
    clock[0] += EXPANSION_LIFETIME
    later = concrete_addrs(host)  # type: ignore[arg-type]
    assert len(calls) == 2 and len(later) == 2  # the new interface is seen after the lifetime


def test_a_new_listener_is_seen_at_once(clock: list[float]) -> None:
    listeners = {"tcp": Listener("/ip4/10.0.0.1/tcp/4001")}
    host = fake_host(listeners)
    assert len(concrete_addrs(host)) == 1  # type: ignore[arg-type]
    listeners["udp"] = Listener("/ip4/10.0.0.1/udp/4001/quic-v1")
    addrs = concrete_addrs(host)  # type: ignore[arg-type]
    assert [endpoint_of(a) for a in addrs] == [
        ("tcp", Endpoint.parse("10.0.0.1:4001")), ("udp", Endpoint.parse("10.0.0.1:4001"))]


def test_callers_cannot_change_the_cached_list(clock: list[float]) -> None:
    host = fake_host({"tcp": Listener("/ip4/10.0.0.1/tcp/4001")})
    concrete_addrs(host).clear()  # type: ignore[arg-type]
    assert len(concrete_addrs(host)) == 1  # type: ignore[arg-type]
