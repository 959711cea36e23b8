"""CBOR envelope shared by every meshnat message, with strict, bounded decoding.

Envelope: a CBOR map with small integer keys, `0: version`, `1: type`, `2: txid` (16 random
bytes, echoed by responses), and the message's own fields from key 8 up. Decoding rejects
anything that is not exactly one such map of an expected type: trailing bytes, indefinite
lengths, duplicate keys, nesting deeper than 4, wrong types (a bool is not an int), unknown keys.
Before cbor2 builds a single object, `wire.scan.check_frame` refuses tags (shared references and
bignums included), floats, simple values and lengths the frame cannot hold, so a frame decodes
into at most its own size in objects.
Any bad input raises a `RemoteProtocolError` subclass and nothing else, and no error message
formats a decoded value (`describe` names its type and size instead).
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar, overload

import cbor2

from meshnat.errors import (
    LocalProtocolError,
    MalformedMessage,
    MessageTooLarge,
    UnexpectedMessage,
    UnsupportedVersion,
)
from meshnat.wire.scan import check_frame

MAX_MESSAGE_SIZE = 4096
"""Largest encoded message, the same bound as DCUtR's and rust-libp2p's."""
WIRE_VERSION = 1
TXID_SIZE = 16
VERSION, TYPE, TXID = 0, 1, 2
FIRST_FIELD = 8
_MAX_DEPTH = 4
_SHOWN = 16
"""Characters of a hostile string or bytes value an error message may show."""


def describe(value: object) -> str:
    """A few bytes about a hostile value for an error message: never its repr.

    The repr of a decoded structure can be far larger than the frame, and the str of a huge
    integer raises; this shows small integers and the start of strings, otherwise only the
    type and size.
    """
    match value:
        case bool():
            return "a bool"
        case int() if -(10**12) < value < 10**12:
            return str(value)
        case int():
            return f"an integer of {value.bit_length()} bits"
        case str() | bytes():
            shown = repr(value[:_SHOWN])
            return shown if len(value) <= _SHOWN else f"{shown}... ({len(value)} long)"
        case list() | tuple() | dict():
            return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def new_txid() -> bytes:
    """A fresh transaction id: 16 random bytes, unguessable by an off-path attacker."""
    return secrets.token_bytes(TXID_SIZE)


def check_printable(value: str, what: str, max_len: int) -> str:
    """Text shown to people: 1..max_len printable characters (no terminal escapes or newlines)."""
    if not 0 < len(value) <= max_len or not value.isprintable():
        raise MalformedMessage(f"{what} must be 1-{max_len} printable characters")
    return value


class Fields:
    """A consuming reader over a decoded map: each `pop_*` validates and removes one field."""

    __slots__ = ("_items",)

    def __init__(self, item: object) -> None:
        if type(item) is not dict or not all(type(k) is int for k in item):
            raise MalformedMessage("message must be a map with integer keys")
        self._items: dict[int, object] = item

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def pop(self, key: int) -> object:
        try:
            return self._items.pop(key)
        except KeyError:
            raise MalformedMessage(f"field {key}: missing") from None

    def pop_int(self, key: int, *, lo: int = 0, hi: int = 2**64 - 1) -> int:
        value = self.pop(key)
        if type(value) is not int or not lo <= value <= hi:
            raise MalformedMessage(f"field {key}: expected an integer in [{lo}, {hi}]")
        return value

    def pop_bytes(self, key: int, *, size: int | None = None, max_size: int = 1024) -> bytes:
        value = self.pop(key)
        if type(value) is not bytes:
            raise MalformedMessage(f"field {key}: expected bytes")
        if size is not None and len(value) != size:
            raise MalformedMessage(f"field {key}: expected {size} bytes, got {len(value)}")
        if len(value) > max_size:
            raise MalformedMessage(f"field {key}: more than {max_size} bytes")
        return value

    def pop_str(self, key: int, *, max_len: int = 120) -> str:
        value = self.pop(key)
        if type(value) is not str or len(value) > max_len:
            raise MalformedMessage(f"field {key}: expected a string of at most {max_len} chars")
        return value

    def pop_list(self, key: int, *, max_items: int) -> list[object]:
        value = self.pop(key)
        if type(value) is not list or len(value) > max_items:
            raise MalformedMessage(f"field {key}: expected a list of at most {max_items} items")
        return value

    def ensure_consumed(self) -> None:
        if self._items:
            keys = sorted(self._items)
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            raise MalformedMessage(f"unknown fields {', '.join(map(str, keys[:4]))}{more}")


class Message(Protocol):
    """What every wire message provides: a class-level `TYPE` (an IntEnum member), a `txid`
    carried in the envelope, and its own fields from key 8 up."""

    @property
    def TYPE(self) -> int: ...

    @property
    def txid(self) -> bytes: ...

    def to_fields(self) -> dict[int, object]: ...

    @classmethod
    def from_fields(cls, txid: bytes, fields: Fields) -> Self: ...


M = TypeVar("M", bound=Message)
A = TypeVar("A", bound=Message)
B = TypeVar("B", bound=Message)
C = TypeVar("C", bound=Message)


def encode(msg: Message) -> bytes:
    """Encode one message; an oversized result is our own bug (LocalProtocolError)."""
    fields = msg.to_fields()
    if any(k < FIRST_FIELD for k in fields):
        raise LocalProtocolError(f"{type(msg).__name__} uses an envelope key")
    data: bytes = cbor2.dumps({VERSION: WIRE_VERSION, TYPE: int(msg.TYPE), TXID: msg.txid,
                               **fields})
    if len(data) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"{type(msg).__name__} encodes to {len(data)} bytes")
    return data


@overload
def decode(data: bytes, a: type[A], /, *, limit: int = ...) -> A: ...
@overload
def decode(data: bytes, a: type[A], b: type[B], /, *, limit: int = ...) -> A | B: ...
@overload
def decode(data: bytes, a: type[A], b: type[B], c: type[C], /, *,
           limit: int = ...) -> A | B | C: ...


def decode(data: bytes, *expected: type[Message], limit: int = MAX_MESSAGE_SIZE) -> Message:
    """Decode exactly one message of one of the `expected` types.

    Raises a `RemoteProtocolError` subclass for any input that is not such a message.
    """
    if len(data) > limit:
        raise MessageTooLarge(len(data), limit)
    check_frame(data, max_depth=_MAX_DEPTH)  # before any object is built
    stream = io.BytesIO(data)
    try:
        item = cbor2.load(
            stream, max_depth=_MAX_DEPTH, allow_indefinite=False, allow_duplicate_keys=False
        )
    except (cbor2.CBORDecodeError, RecursionError, ValueError, OverflowError) as exc:
        # cbor2's message may quote the input (a duplicate key, say): keep only its start
        raise MalformedMessage(f"not one well-formed CBOR item: {str(exc)[:60]}") from exc
    if stream.tell() != len(data):  # cbor2 ignores trailing bytes; we don't
        raise MalformedMessage(f"{len(data) - stream.tell()} trailing bytes")
    fields = Fields(item)
    version = fields.pop_int(VERSION)
    if version != WIRE_VERSION:
        raise UnsupportedVersion(version, WIRE_VERSION)
    kind = fields.pop_int(TYPE)
    txid = fields.pop_bytes(TXID, size=TXID_SIZE)
    types = tuple(int(getattr(cls, "TYPE")) for cls in expected)  # noqa: B009
    for cls, type_code in zip(expected, types, strict=True):
        if type_code == kind:
            msg = cls.from_fields(txid, fields)
            fields.ensure_consumed()
            return msg
    raise UnexpectedMessage(kind, types)


@dataclass(frozen=True, slots=True)
class TxidOnly:
    """Base of messages with no fields of their own (subclasses set `TYPE`)."""

    txid: bytes

    def to_fields(self) -> dict[int, object]:
        return {}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid)
