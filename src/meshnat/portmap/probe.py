"""`GatewayProbe`: which of PCP and NAT-PMP a gateway speaks, sans-IO.

Sends a PCP ANNOUNCE (RFC 6887 §14.1) and a NAT-PMP external-address request (RFC 6886 §3.2)
at once, each on its own schedule. PCP is decided when it answers, or when the gateway
answers the PCP request in NAT-PMP (version 0, "unsupported version": RFC 6887 §9); NAT-PMP
when it answers. `decided` is true once PCP works (it is preferred), or once neither is
still pending. A protocol not wanted is not asked. Only datagrams from the gateway's port
5351 count.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from meshnat.endpoint import Endpoint
from meshnat.errors import RemoteProtocolError
from meshnat.portmap import natpmp, pcp
from meshnat.portmap.timing import NATPMP_SCHEDULE, PCP_SCHEDULE, Retransmission


class GatewayProbe:
    """What the gateway speaks: `pcp` (None: not known yet) and `natpmp_ip` (its external
    address by NAT-PMP, None: no answer yet)."""

    def __init__(self, gateway: IPv4Address | IPv6Address, client_ip: IPv4Address | IPv6Address,
                 now: float, rand: Callable[[], float], *, ask_pcp: bool = True,
                 ask_natpmp: bool = True) -> None:
        self.gateway = Endpoint(gateway, natpmp.SERVER_PORT)
        self._announce = pcp.announce_request(client_ip)
        self._pcp_sends = Retransmission(PCP_SCHEDULE, now, rand)
        self._natpmp_sends = Retransmission(NATPMP_SCHEDULE, now, rand)
        self.pcp: bool | None = None if ask_pcp else False
        self.pcp_epoch: int | None = None
        self.natpmp_ip: IPv4Address | None = None
        self.natpmp_refused = not ask_natpmp
        self.ignored = 0

    def pop_datagrams(self, now: float) -> list[bytes]:
        out = []
        if self.pcp is None and self._pcp_sends.due(now):
            out.append(self._announce)
        if self._natpmp_pending and self._natpmp_sends.due(now):
            out.append(natpmp.external_address_request())
        return out

    def get_timer(self, now: float) -> float | None:
        timers = [s.get_timer() for s, pending in ((self._pcp_sends, self.pcp is None),
                                                   (self._natpmp_sends, self._natpmp_pending))
                  if pending and not s.gave_up(now)]
        return min(timers) if timers else None

    @property
    def _natpmp_pending(self) -> bool:
        return self.natpmp_ip is None and not self.natpmp_refused

    def decided(self, now: float) -> bool:
        if self.pcp:
            return True
        pcp_open = self.pcp is None and not self._pcp_sends.gave_up(now)
        natpmp_open = self._natpmp_pending and not self._natpmp_sends.gave_up(now)
        return not (pcp_open or natpmp_open)

    def receive(self, data: bytes, source: Endpoint) -> None:
        if source != self.gateway or not data:
            self.ignored += 1
            return
        try:
            if data[0] == pcp.VERSION:
                answer = pcp.decode_response(data)
                if answer.opcode is pcp.Opcode.ANNOUNCE:
                    self.pcp = answer.result is pcp.ResultCode.SUCCESS
                    self.pcp_epoch = answer.epoch
                    return
            else:
                self._natpmp(natpmp.decode_response(data))
                return
        except RemoteProtocolError:
            pass
        self.ignored += 1

    def _natpmp(self, message: natpmp.AddressResponse | natpmp.MapResponse) -> None:
        if not isinstance(message, natpmp.AddressResponse):
            self.ignored += 1
        elif message.result is natpmp.ResultCode.UNSUPPORTED_VERSION:
            if self.pcp is None:
                self.pcp = False  # the gateway answered our PCP request in NAT-PMP
        elif message.result is natpmp.ResultCode.SUCCESS and not message.external_ip.is_unspecified:
            self.natpmp_ip = message.external_ip
        else:
            self.natpmp_refused = True
