"""What a `ChatNetwork` reports: members coming, going and talking, and what a line reached.

Past-tense facts for a `ChatEventSink` (which must not block or raise). `to_json()` gives the
objects `meshnat chat --json` prints, keys in that order. Paths are `PathKind` labels, where
`punched` means "direct after starting relayed" (see docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshnat.paths import PathKind


@dataclass(frozen=True, slots=True)
class Member:
    """Who an event is about: a peer id and the display name from its record."""

    peer: str
    name: str

    def to_json(self) -> dict[str, object]:
        return {"peer": self.peer, "name": self.name}


@dataclass(frozen=True, slots=True)
class MemberConnected:
    """A member is reachable for the first time, over `path` (`direct` or `relayed`)."""

    member: Member
    path: PathKind
    transport: str

    def to_json(self) -> dict[str, object]:
        return {"event": "peer-connected", **self.member.to_json(), "path": self.path,
                "transport": self.transport}


@dataclass(frozen=True, slots=True)
class MemberPunched:
    """A member first reached through a relay now has a direct connection."""

    member: Member
    transport: str

    def to_json(self) -> dict[str, object]:
        return {"event": "path-upgraded", **self.member.to_json(), "path": PathKind.PUNCHED,
                "transport": self.transport}


@dataclass(frozen=True, slots=True)
class MemberUnreachable:
    """No path to a member this time; it is tried again later while its record is listed."""

    member: Member
    error: str

    def to_json(self) -> dict[str, object]:
        return {"event": "peer-unreachable", **self.member.to_json(), "error": self.error}


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """A member left (`reason` is `bye`); the record it left with does not bring it back."""

    member: Member
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"event": "peer-left", **self.member.to_json(), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class LineHeard:
    """A line from a member, and the path it came over."""

    member: Member
    text: str
    path: PathKind
    transport: str

    def to_json(self) -> dict[str, object]:
        return {"event": "message", **self.member.to_json(), "text": self.text,
                "path": self.path, "transport": self.transport}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One member a line reached, and over which path."""

    member: Member
    path: PathKind

    def to_json(self) -> dict[str, object]:
        return {**self.member.to_json(), "path": self.path}


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A line did not reach a connected member."""

    member: Member
    error: str

    def to_json(self) -> dict[str, object]:
        return {"event": "send-failed", **self.member.to_json(), "error": self.error}


@dataclass(frozen=True, slots=True)
class LineSent:
    """What `ChatNetwork.say` did with one line: who got it and who did not."""

    text: str
    to: tuple[Delivery, ...]
    failed: tuple[SendFailed, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"event": "sent", "text": self.text, "to": [d.to_json() for d in self.to]}


ChatEvent = MemberConnected | MemberPunched | MemberUnreachable | MemberLeft | LineHeard
ChatEventSink = Callable[[ChatEvent], None]


def ignore_chat_events(event: ChatEvent) -> None:
    """The default sink: drops every event."""
