"""`NodeBound`: the `serve` of a service that only needs the node while it is mounted."""

from __future__ import annotations

import trio

from meshnat._libp2p import TaskStatus
from meshnat.errors import NotMounted
from meshnat.node import MeshNode


class NodeBound:
    """A service that registers nothing: mounted, it holds on to the node (`node`) until it is
    unmounted. Subclass it for clients whose calls open their own streams."""

    _node: MeshNode | None = None

    async def serve(self, node: MeshNode, *, task_status: TaskStatus[None]) -> None:
        self._node = node
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._node = None

    @property
    def node(self) -> MeshNode:
        """The node this service is mounted on; NotMounted while it is not mounted."""
        if self._node is None:
            raise NotMounted(f"mount {type(self).__name__} on a running MeshNode first")
        return self._node
