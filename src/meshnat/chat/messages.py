"""Wire messages of `/meshnat/chat/1.0.0`: one message per stream; the receiver answers with
its end of stream once it has read it, or an `ErrorResponse` (RATE_LIMITED) (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.wire.codec import Fields, TxidOnly, check_printable

TEXT = 8
MAX_TEXT = 1000
"""Characters per chat line (a line fits one 4 KiB frame even at 4 bytes per character)."""


class MsgType(IntEnum):
    SAY = 72
    BYE = 73


def check_text(text: str) -> str:
    """A chat line: 1..MAX_TEXT printable characters (no terminal escapes, no newlines)."""
    return check_printable(text, "a chat line", MAX_TEXT)


@dataclass(frozen=True, slots=True)
class Say:
    """One line of chat from the stream's (authenticated) peer."""

    TYPE: ClassVar[MsgType] = MsgType.SAY
    txid: bytes
    text: str

    def to_fields(self) -> dict[int, object]:
        return {TEXT: self.text}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        return cls(txid, check_text(f.pop_str(TEXT, max_len=MAX_TEXT)))


@dataclass(frozen=True, slots=True)
class Bye(TxidOnly):
    """The sender leaves the network."""

    TYPE: ClassVar[MsgType] = MsgType.BYE
