"""Wire messages of `/meshnat/tunnel/1.0.0` (docs/operator-guide.md).

Each tunnel is one stream. The forwarding node sends `OpenTunnel` naming the service; the
exposing node answers `TunnelOpened` once it holds a TCP connection to the service's target,
or `OpenRefused` with a `RefusalCode`. After `TunnelOpened` the stream carries raw bytes both
ways (no more frames) until each side half-closes. Message types 48-50.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.errors import ConfigError, MalformedMessage
from meshnat.wire.codec import Fields, TxidOnly, describe

SERVICE = 8
CODE, REASON = 8, 9
MAX_SERVICE_NAME = 64
MAX_REASON = 120
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class MsgType(IntEnum):
    OPEN_TUNNEL = 48
    TUNNEL_OPENED = 49
    OPEN_REFUSED = 50


class RefusalCode(IntEnum):
    """Why an exposing node would not open a tunnel."""

    UNKNOWN_SERVICE = 1
    NOT_ALLOWED = 2
    TARGET_REFUSED = 3
    TARGET_TIMEOUT = 4
    PEER_LIMIT = 5
    """This caller already has `max_tunnels_per_peer` tunnels open."""
    NODE_LIMIT = 6
    """The node already serves `max_tunnels` tunnels."""
    BAD_REQUEST = 7

    @property
    def label(self) -> str:
        """The code as it appears in events and `--json` output, e.g. `not-allowed`."""
        return self.name.lower().replace("_", "-")


def is_service_name(name: str) -> bool:
    """1-64 characters of letters, digits, `.`, `_`, `-`, starting with a letter or digit."""
    return 0 < len(name) <= MAX_SERVICE_NAME and _NAME.match(name) is not None


def check_service_name(name: str) -> str:
    """`name` if it is a valid service name, else ConfigError."""
    if type(name) is not str or not is_service_name(name):
        raise ConfigError(f"service name must be 1-{MAX_SERVICE_NAME} characters of letters, "
                          f"digits, '.', '_', '-', got {describe(name)}")
    return name


@dataclass(frozen=True, slots=True)
class OpenTunnel:
    """Open a tunnel to the exposed service `service`."""

    TYPE: ClassVar[MsgType] = MsgType.OPEN_TUNNEL
    txid: bytes
    service: str

    def to_fields(self) -> dict[int, object]:
        return {SERVICE: self.service}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        service = f.pop_str(SERVICE, max_len=MAX_SERVICE_NAME)
        if not is_service_name(service):
            raise MalformedMessage(f"field {SERVICE}: not a service name")
        return cls(txid, service)


@dataclass(frozen=True, slots=True)
class TunnelOpened(TxidOnly):
    """The target accepted a TCP connection: raw bytes follow on this stream."""

    TYPE: ClassVar[MsgType] = MsgType.TUNNEL_OPENED


@dataclass(frozen=True, slots=True)
class OpenRefused:
    """No tunnel for `txid` (all zeros when refused before the request was read)."""

    TYPE: ClassVar[MsgType] = MsgType.OPEN_REFUSED
    txid: bytes
    code: RefusalCode
    reason: str

    def to_fields(self) -> dict[int, object]:
        return {CODE: int(self.code), REASON: self.reason[:MAX_REASON]}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        code = RefusalCode(f.pop_int(CODE, lo=min(RefusalCode), hi=max(RefusalCode)))
        return cls(txid, code, f.pop_str(REASON, max_len=MAX_REASON))
