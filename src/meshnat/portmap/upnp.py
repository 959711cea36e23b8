"""UPnP-IGD port mappings through `miniupnpc` (blocking: every call runs in a worker thread,
abandoned on cancel, under a deadline; one call at a time per client)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TypeVar

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import PeerTimeout, PeerUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFLICT_ERRORS = ("ConflictInMappingEntry", "718", "ConflictWithOtherMechanisms", "729")
"""The external port is taken (UPnP IGD v1 error 718, v2 729): try another."""


class UpnpConflict(PeerUnavailable):
    """The gateway refused the external port: it is mapped to someone else."""


class UpnpClient:
    """One Internet Gateway Device found by SSDP. `discover()` first, then map/delete."""

    def __init__(self, *, timeout: float) -> None:
        import miniupnpc  # a py-libp2p dependency, C extension: imported where it is used

        self._upnp = miniupnpc.UPnP()
        self._upnp.discoverdelay = max(100, int(timeout * 1000 / 2))
        self._timeout = timeout
        self._lock = trio.Lock()
        self.lan_ip: str | None = None
        self.external_ip: IPv4Address | None = None

    async def _call(self, stage: str, fn: Callable[[], T]) -> T:
        async with self._lock:
            try:
                with trio.fail_after(self._timeout):
                    return await trio.to_thread.run_sync(  # type: ignore[call-arg]
                        fn, abandon_on_cancel=True)
            except trio.TooSlowError:
                raise PeerTimeout(f"UPnP {stage}", self._timeout) from None
            except Exception as exc:  # miniupnpc raises bare Exception with the SOAP error
                text = str(exc)[:60]
                if any(code in text for code in CONFLICT_ERRORS):
                    raise UpnpConflict(f"UPnP {stage}: {text}") from None
                raise PeerUnavailable(f"UPnP {stage}: {text}") from None

    async def discover(self) -> IPv4Address:
        """Find an IGD on the LAN; its external address. PeerUnavailable if there is none."""
        def find() -> tuple[str, str]:
            if self._upnp.discover() < 1:
                raise Exception("no UPnP device answered")
            self._upnp.selectigd()
            return str(self._upnp.lanaddr), str(self._upnp.externalipaddress())

        self.lan_ip, external = await self._call("discover", find)
        try:
            self.external_ip = IPv4Address(external)
        except ValueError:
            raise PeerUnavailable("UPnP: the gateway has no IPv4 external address") from None
        return self.external_ip

    async def add(self, transport: str, external_port: int, internal_port: int,
                  lease: int, description: str) -> Endpoint:
        """Map `external_port` to this host's `internal_port` for `lease` seconds (again:
        a renewal). UpnpConflict when the port is someone else's."""
        if self.lan_ip is None or self.external_ip is None:
            raise PeerUnavailable("UPnP: discover() first")
        lan_ip, proto = self.lan_ip, transport.upper()
        await self._call("add", lambda: self._upnp.addportmapping(
            external_port, proto, lan_ip, internal_port, description, "", lease))
        return Endpoint(self.external_ip, external_port)

    async def delete(self, transport: str, external_port: int) -> None:
        await self._call("delete", lambda: self._upnp.deleteportmapping(
            external_port, transport.upper()))
