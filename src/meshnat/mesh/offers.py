"""`Offers`: the services a node runs for others, mounted only while it is confirmed public.

Reflection, the classification helper, DHT server mode and (unless turned off) a relay with
the public-relay limits. Behind a NAT, or before anything is known, a node serves none of
them: its peers could not reach them, and a node never offers what it cannot back.
"""

from __future__ import annotations

import contextlib
import logging

from meshnat._libp2p.dht import MeshDHT
from meshnat.classify import ProbeHelperConfig, ProbeHelperService
from meshnat.errors import LocalProtocolError
from meshnat.node import MeshNode, Service
from meshnat.reflection import ReflectionService
from meshnat.relay import RelayService

log = logging.getLogger(__name__)

REFLECTOR, RELAY, DHT_SERVER = "meshnat/reflector", "meshnat/relay", "meshnat/dht-server"
"""Service names a public node puts in its record."""


class Offers:
    """Mounts or unmounts the public services as a whole."""

    def __init__(self, node: MeshNode, dht: MeshDHT, *, relay: bool) -> None:
        self._node, self._dht, self._relay = node, dht, relay
        self._mounted: list[Service] = []

    @property
    def active(self) -> bool:
        return bool(self._mounted)

    def names(self) -> list[str]:
        """The service names offered now, for the record."""
        if not self._mounted:
            return []
        return [REFLECTOR, DHT_SERVER, *([RELAY] if self._relay else [])]

    async def offer(self, public: bool) -> None:
        """Serve (public) or stop serving (not public)."""
        if public and not self._mounted:
            services: list[Service] = [ReflectionService(),
                                       ProbeHelperService(ProbeHelperConfig(alt_port=0))]
            if self._relay:
                services.append(RelayService())
            for service in services:
                self._mounted.append(await self._node.mount(service))
            await self._dht.set_server(True)
            log.info("mesh: confirmed public; serving %s", ", ".join(self.names()))
        elif not public and self._mounted:
            await self.withdraw()
            await self._dht.set_server(False)
            log.info("mesh: not public; serving nothing for others")

    async def withdraw(self) -> None:
        """Unmount every offered service."""
        while self._mounted:
            with contextlib.suppress(LocalProtocolError):  # already gone with the node
                await self._node.unmount(self._mounted.pop())
