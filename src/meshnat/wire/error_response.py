"""`ErrorResponse`: the one refusal message every meshnat stream protocol answers with.

Message type numbers are unique across meshnat protocols (reflection 1-2, this 3,
classification 16-20, punch 32-34, records and rendezvous 64-69, chat 72-73), because
datagrams of several protocols share one UDP socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from meshnat.errors import RemoteProtocolError, UnsupportedVersion
from meshnat.wire.codec import TXID_SIZE, Fields

ERROR_TYPE = 3
CODE, REASON = 11, 12
MAX_REASON = 120


class ErrorCode(IntEnum):
    BAD_REQUEST = 1
    RATE_LIMITED = 2
    NO_OBSERVED_ADDRESS = 3
    UNSUPPORTED_VERSION = 4
    FORBIDDEN_TARGET = 5
    UNAVAILABLE = 6
    INVALID_RECORD = 7


class _ErrorType(IntEnum):
    ERROR_RESPONSE = ERROR_TYPE


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The peer will not answer `txid`: why, as a code and a short reason."""

    TYPE: ClassVar[IntEnum] = _ErrorType.ERROR_RESPONSE
    txid: bytes
    code: ErrorCode
    reason: str

    def to_fields(self) -> dict[int, object]:
        return {CODE: int(self.code), REASON: self.reason[:MAX_REASON]}

    @classmethod
    def from_fields(cls, txid: bytes, f: Fields) -> Self:
        code = ErrorCode(f.pop_int(CODE, lo=min(ErrorCode), hi=max(ErrorCode)))
        return cls(txid, code, f.pop_str(REASON, max_len=MAX_REASON))


def refusal_for(error: RemoteProtocolError) -> ErrorResponse:
    """What to tell a peer whose request could not be decoded (its txid is unknown: zeros)."""
    code = (ErrorCode.UNSUPPORTED_VERSION if isinstance(error, UnsupportedVersion)
            else ErrorCode.BAD_REQUEST)
    return ErrorResponse(bytes(TXID_SIZE), code, str(error))
