"""`RecordSlots`: which records a DHT server keeps for whom, bounded per sender and network.

A DHT server stores what peers put. Records are bound to their signer's key (the DHT key is a
hash of the signer's peer id), but fresh identities are free, so one host could otherwise fill
the store with records of identities it made up. Each stored key holds one slot of a
`SlotLimit` charged to the peer and the source network that first put it, until the record
expires; a newer record under a key already held replaces it at no further cost. Pure: time
comes in as `now` (Unix seconds, the clock records expire on).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnat.limits import Claim, SlotLimit


@dataclass(frozen=True, slots=True)
class _Held:
    claim: Claim
    expires_at: float


class RecordSlots:
    """At most `total` stored keys, `per_peer` put by one peer id, `per_network` by one
    source network (IPv4 /24, IPv6 /56)."""

    def __init__(self, *, total: int = 4096, per_peer: int = 8, per_network: int = 64) -> None:
        self._limit = SlotLimit(total=total, per_peer=per_peer, per_network=per_network)
        self._held: dict[bytes, _Held] = {}

    def admit(self, key: bytes, sender: str, network: str, expires_at: float,
              now: float) -> bool:
        """May `sender` (from `network`) store a record under `key` that holds until
        `expires_at`? A held key is renewed; a new one takes a slot or is refused."""
        self.expire(now)
        held = self._held.get(key)
        if held is not None:
            self._held[key] = _Held(held.claim, max(held.expires_at, expires_at))
            return True
        claim = self._limit.acquire(sender, network)
        if claim is None:
            return False
        self._held[key] = _Held(claim, expires_at)
        return True

    def expire(self, now: float) -> list[bytes]:
        """Give back the slots of records expired by `now`; returns their keys."""
        gone = [key for key, held in self._held.items() if held.expires_at <= now]
        for key in gone:
            self._limit.release(self._held.pop(key).claim)
        return gone

    @property
    def last_refusal(self) -> str | None:
        """Which bound refused the last `admit` (`"peer"`, `"network"`, `"total"`, …)."""
        return self._limit.last_refusal

    def __len__(self) -> int:
        return len(self._held)
