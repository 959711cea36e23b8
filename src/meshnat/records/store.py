"""`RecordStore`: the newest verified record per peer, bounded, stale ones refused (pure).

Time comes in as `now` (Unix seconds: a record's expiry is judged on the wall clock, the one
clock its signer and its readers share). Only verified records may be offered.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

from meshnat.errors import ConfigError, StaleRecord


class Versioned(Protocol):
    """What the store needs of a record."""

    @property
    def key(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def expires_at(self) -> float: ...


R = TypeVar("R", bound=Versioned)


class RecordStore(Generic[R]):
    """Keeps, per peer, the record with the highest sequence number until it expires.

    At most `max_records` peers are kept; the least recently updated is forgotten first.
    """

    def __init__(self, *, max_records: int = 1024) -> None:
        if max_records < 1:
            raise ConfigError(f"max_records must be >= 1, got {max_records}")
        self._max = max_records
        self._records: OrderedDict[str, R] = OrderedDict()

    def offer(self, record: R, now: float) -> bool:
        """Keep `record` if it is the newest for its peer: True if it is new, False if the
        same sequence number is already held (a replay of the current record).

        Raises StaleRecord when the record has expired or a higher sequence number is held.
        """
        if record.expires_at <= now:
            raise StaleRecord(f"record of {record.key} expired {now - record.expires_at:.0f}s ago")
        known = self.get(record.key, now)
        if known is not None and record.seq < known.seq:
            raise StaleRecord(f"record of {record.key} has seq {record.seq}, "
                              f"older than the seq {known.seq} already held")
        if known is not None and record.seq == known.seq:
            if record != known:
                raise StaleRecord(f"record of {record.key} reuses seq {record.seq} "
                                  "with other contents")
            return False
        self._records.pop(record.key, None)
        self._records[record.key] = record
        while len(self._records) > self._max:
            self._records.popitem(last=False)
        return True

    def get(self, key: str, now: float) -> R | None:
        """The record held for `key`, or None (never an expired one)."""
        record = self._records.get(key)
        if record is not None and record.expires_at <= now:
            del self._records[key]
            return None
        return record

    def records(self, now: float) -> list[R]:
        """Every unexpired record, least recently updated first."""
        for key in [k for k, r in self._records.items() if r.expires_at <= now]:
            del self._records[key]
        return list(self._records.values())

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)
