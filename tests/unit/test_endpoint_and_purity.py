"""Endpoint parsing and observer groups; pure modules import neither trio nor libp2p."""

from __future__ import annotations

import ast
from ipaddress import ip_address
from pathlib import Path

import pytest

from meshnat.endpoint import Endpoint
from meshnat.errors import ConfigError

SRC = Path(__file__).parents[2] / "src" / "meshnat"
PURE = ["endpoint.py", "errors.py", "events.py", "ratelimit.py", "wire/codec.py", "wire/scan.py",
        "wire/frames.py", "reflection/messages.py", "reflection/core.py",
        "discovery/consensus.py", "wire/error_response.py", "classify/messages.py",
        "classify/report.py", "classify/classifier.py", "classify/plan.py",
        "punch/messages.py", "punch/core.py", "punch/birthday.py", "punch/plan.py",
        "punch/config.py", "punch/payment.py", "punch/health.py", "punch/repunch.py",
        "config.py",
        "portmap/natpmp.py", "portmap/pcp.py", "portmap/timing.py", "portmap/mapping.py",
        "portmap/session.py", "portmap/probe.py", "portmap/gateway.py", "portmap/config.py",
        "relay/policy.py", "tunnel/messages.py", "tunnel/core.py", "records/messages.py",
        "traversal/messages.py", "traversal/pairs.py", "traversal/scope.py", "limits.py",
        "traversal/core.py", "traversal/config.py", "traversal/admission.py",
        "traversal/budget.py",
        "records/store.py", "rendezvous/messages.py", "rendezvous/core.py", "chat/messages.py",
        "paths.py", "chat/events.py"]


@pytest.mark.parametrize("text", ["1.2.3.4:5", "[2001:db8::1]:443"])
def test_endpoint_text_round_trips(text: str) -> None:
    assert str(Endpoint.parse(text)) == text


@pytest.mark.parametrize("text", ["1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "host:80", ":80"])
def test_bad_endpoint_text_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        Endpoint.parse(text)


def test_ipv4_mapped_sockaddrs_are_unwrapped() -> None:
    assert Endpoint.from_sockaddr(("::ffff:1.2.3.4", 5, 0, 0)) == Endpoint.parse("1.2.3.4:5")


def test_observer_groups_are_ipv4_addresses_and_ipv6_slash_56() -> None:
    a = Endpoint(ip_address("2001:db8:0:ff::1"), 1)
    b = Endpoint(ip_address("2001:db8:0:1::2"), 2)
    c = Endpoint(ip_address("2001:db8:0:100::2"), 2)
    assert a.observer_group() == b.observer_group() != c.observer_group()
    assert Endpoint.parse("1.2.3.4:5").observer_group() == "1.2.3.4"


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_neither_trio_nor_libp2p(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"trio", "libp2p", "multiaddr"}, module
