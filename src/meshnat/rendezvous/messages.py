"""Wire messages of `/meshnat/rendezvous/1.0.0` (docs/protocols/records.md).

One request and one answer per stream: `Register` (a signed record under a namespace) is
answered by `Registered`, `Discover` by `Discovered` (a page of signed records and a cookie for
the next page), `Unregister` by `Registered` with a TTL of 0; any of them by `ErrorResponse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.errors import MalformedMessage
from meshnat.wire.codec import Fields, describe

NAMESPACE, RECORD, TTL, COOKIE, RECORDS = 8, 9, 10, 11, 12
MAX_RECORD = 2048
"""Largest signed record (the envelope bound of records/record.py)."""
COOKIE_SIZE = 8
MAX_PAGE = 16
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class MsgType(IntEnum):
    REGISTER = 65
    REGISTERED = 66
    DISCOVER = 67
    DISCOVERED = 68
    UNREGISTER = 69


def check_namespace(text: str) -> str:
    """A network name: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit."""
    if type(text) is not str or _NAMESPACE.fullmatch(text) is None:
        raise MalformedMessage(f"namespace must be 1-64 of A-Z a-z 0-9 . _ - "
                               f"(starting with a letter or digit), got {describe(text)}")
    return text


def _pop_cookie(f: Fields) -> bytes:
    cookie = f.pop_bytes(COOKIE, max_size=COOKIE_SIZE)
    if cookie and len(cookie) != COOKIE_SIZE:
        raise MalformedMessage(f"cookie must be empty or {COOKIE_SIZE} bytes")
    return cookie


@dataclass(frozen=True, slots=True)
class Register:
    """Keep `record` (the sender's own, signed) under `namespace` for `ttl` seconds."""

    TYPE: ClassVar[MsgType] = MsgType.REGISTER
    txid: bytes
    namespace: str
    record: bytes
    ttl: int

    def to_fields(self) -> dict[int, object]:
        return {NAMESPACE: self.namespace, RECORD: self.record, TTL: self.ttl}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, check_namespace(f.pop_str(NAMESPACE, max_len=64)),
                   f.pop_bytes(RECORD, max_size=MAX_RECORD), f.pop_int(TTL, hi=2**32))


@dataclass(frozen=True, slots=True)
class Registered:
    """The registration holds for `ttl` seconds (0: it was removed)."""

    TYPE: ClassVar[MsgType] = MsgType.REGISTERED
    txid: bytes
    ttl: int

    def to_fields(self) -> dict[int, object]:
        return {TTL: self.ttl}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, f.pop_int(TTL, hi=2**32))


@dataclass(frozen=True, slots=True)
class Discover:
    """The records under `namespace` registered after `cookie` (empty: from the start)."""

    TYPE: ClassVar[MsgType] = MsgType.DISCOVER
    txid: bytes
    namespace: str
    cookie: bytes = b""

    def to_fields(self) -> dict[int, object]:
        return {NAMESPACE: self.namespace, COOKIE: self.cookie}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, check_namespace(f.pop_str(NAMESPACE, max_len=64)), _pop_cookie(f))


@dataclass(frozen=True, slots=True)
class Discovered:
    """A page of signed records; an empty `cookie` means there are no more pages."""

    TYPE: ClassVar[MsgType] = MsgType.DISCOVERED
    txid: bytes
    records: tuple[bytes, ...]
    cookie: bytes = b""

    def to_fields(self) -> dict[int, object]:
        return {RECORDS: list(self.records), COOKIE: self.cookie}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        records = []
        for item in f.pop_list(RECORDS, max_items=MAX_PAGE):
            if type(item) is not bytes or not 0 < len(item) <= MAX_RECORD:
                raise MalformedMessage(f"records must be 1-{MAX_RECORD} bytes each")
            records.append(item)
        return cls(txid, tuple(records), _pop_cookie(f))


@dataclass(frozen=True, slots=True)
class Unregister:
    """Remove the sender's registration under `namespace`."""

    TYPE: ClassVar[MsgType] = MsgType.UNREGISTER
    txid: bytes
    namespace: str

    def to_fields(self) -> dict[int, object]:
        return {NAMESPACE: self.namespace}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, check_namespace(f.pop_str(NAMESPACE, max_len=64)))
