"""Signed address records: what a node says about how to reach it, and how readers check it."""

from meshnat.records.authority import RecordAuthority, RecordConfig
from meshnat.records.record import (
    AddressRecord,
    NatSummary,
    SignedRecord,
    sign_record,
    verify_record,
)
from meshnat.records.store import RecordStore

__all__ = [
    "AddressRecord",
    "NatSummary",
    "RecordAuthority",
    "RecordConfig",
    "RecordStore",
    "SignedRecord",
    "sign_record",
    "verify_record",
]
