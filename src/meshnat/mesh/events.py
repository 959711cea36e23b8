"""What the mesh reports as it organizes itself (`meshnat up` prints these)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MeshChanged:
    """Something the node decided or learned: `what` is `reachability`, `reflectors`,
    `relays`, `published`, `peers`, `nat-report` or `path-upgraded` (a relayed peer now
    reached over a punched path); `detail` is JSON-ready."""

    what: str
    detail: dict[str, object]

    def to_json(self) -> dict[str, object]:
        return {"event": self.what, **self.detail}


MeshSink = Callable[[MeshChanged], None]


def ignore_mesh_events(event: MeshChanged) -> None:
    """The default sink."""
