"""One traversal as the service runs it (`Traversal`), and a stream on a taken pair
(`PairStream`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from meshnat._libp2p import ID, INetConn, INetStream
from meshnat.endpoint import Endpoint
from meshnat.limits import Claim
from meshnat.traversal.budget import SendBudget
from meshnat.traversal.carrier import Carrier
from meshnat.traversal.core import TraversalSession
from meshnat.traversal.pairs import PairTable, PortPair


@dataclass(eq=False)
class EarlyConnection:
    """An early dial under way (`traversal/early.py`): its task's scope and its outcome."""

    remote: Endpoint
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    connection: INetConn | None = None
    """Set once the handshake completed (None while dialling, or when it failed)."""


@dataclass(eq=False)
class Traversal:
    """One traversal toward a peer as the service runs it: its session (the rules, pure),
    the carrier its probes travel by, and the transport's side of a taken pair."""

    peer: ID
    session: TraversalSession
    carrier: Carrier | None
    """None once stopped (a pair was taken, or the traversal closed)."""
    shared: bool
    """Probing from the node's UDP listen port rather than a socket of its own."""
    claim: Claim | None = None
    """The slot a traversal the peer started holds (per peer, network, total)."""
    listener: str | None = None
    """The ephemeral QUIC listen address on a taken pair's local port, while it exists."""
    connection: INetConn | None = None
    early: EarlyConnection | None = None
    """The early dial, if the session made one."""
    connected: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) whenever the session took an input."""
    wake: trio.Event = field(default_factory=trio.Event)
    """Set when an input arrived outside the driver loop (it recomputes its timer)."""
    acting: trio.Lock = field(default_factory=trio.Lock)
    """Held while the session's actions are executed, so they run once and in order."""
    dialling: trio.Lock = field(default_factory=trio.Lock)
    running: trio.CancelScope = field(default_factory=trio.CancelScope)
    """The driver loop's scope, cancelled when the traversal is forgotten."""
    receiving: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def txid(self) -> bytes:
        return self.session.txid

    @property
    def table(self) -> PairTable:
        return self.session.table

    @property
    def budget(self) -> SendBudget:
        return self.session.budget

    @property
    def dialer(self) -> bool | None:
        return self.session.dialer

    @property
    def probes_sent(self) -> int:
        return self.session.stats.probes_sent

    @property
    def keepalives_sent(self) -> int:
        return self.session.stats.keepalives_sent

    @property
    def closed(self) -> bool:
        return self.carrier is None

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def stop(self) -> None:
        """End receiving and close an own socket, freeing its port."""
        self.receiving.cancel()
        if self.carrier is not None:
            self.carrier.close()
            self.carrier = None

    def to_json(self, now: float) -> dict[str, object]:
        return {"traversal": self.id, "peer": str(self.peer), "local_port": self.table.local_port,
                "probing": not self.closed, "keepalives_sent": self.keepalives_sent,
                "probes_sent": self.probes_sent,
                "unproven_bytes": self.budget.statistics().unproven_bytes,
                "withheld": self.budget.withheld,
                "pairs": [p.to_json(now) for p in self.table.pairs()]}


@dataclass(frozen=True, slots=True)
class PairStream:
    """A stream opened over a taken pair, and the path it runs on."""

    pair: PortPair
    stream: INetStream
    connection: INetConn
    local_port: int
    remote: Endpoint
