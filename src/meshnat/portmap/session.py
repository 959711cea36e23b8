"""`MappingSession`: one port mapping by PCP or NAT-PMP, sans-IO.

Inputs take `now`: `start`, `receive(data, source)`, `announced(data, source)` (the
gateway's unsolicited multicast), `handle_timer`, `release`; outputs are
the datagrams to send (`pop_datagrams`, all to `gateway`) and `MappingEvent`s. The session
asks for a mapping (retransmitting per the protocol's schedule), renews it halfway to
expiry, remaps by itself when the epoch shows the gateway lost its state, tries another
external port when the gateway cannot give the suggested one (at most `max_conflicts`
times), and deletes the mapping on `release`. Only responses from the gateway's address and
port 5351 that match the request (opcode, internal port, PCP nonce and protocol) count;
anything else is dropped and counted (`ignored`), never raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from ipaddress import IPv4Address, IPv6Address

from meshnat.endpoint import Endpoint
from meshnat.errors import RemoteProtocolError
from meshnat.portmap import natpmp, pcp
from meshnat.portmap.mapping import (
    Failed,
    Lost,
    Mapping,
    MappingEvent,
    MappingProtocol,
    Obtained,
    Released,
)
from meshnat.portmap.timing import (
    NATPMP_SCHEDULE,
    PCP_SCHEDULE,
    EpochTracker,
    Retransmission,
    Schedule,
)

RELEASE_SCHEDULE = Schedule(initial=0.25, maximum=0.5, jitter=0.0, attempts=2)
"""A delete is sent twice at most: a node leaving does not wait for its gateway."""
_PCP_CONFLICT = {pcp.ResultCode.CANNOT_PROVIDE_EXTERNAL}
"""The suggested external port is taken: suggest another (NAT-PMP gateways pick one
themselves, RFC 6886 §3.3)."""


class _State(Enum):
    REQUESTING = auto()
    MAPPED = auto()
    RELEASING = auto()
    DONE = auto()


@dataclass(frozen=True, slots=True)
class _Reply:
    ok: bool
    code: str
    epoch: int
    lifetime: int
    external: Endpoint | None
    conflict: bool


class MappingSession:
    """Asks `gateway` for a mapping of `internal_port` and keeps it (see the module doc)."""

    def __init__(self, protocol: MappingProtocol, transport: str, internal_port: int, *,
                 gateway: IPv4Address | IPv6Address, client_ip: IPv4Address | IPv6Address,
                 lifetime: int, nonce: bytes, rand: Callable[[], float],
                 pick_port: Callable[[], int], external_ip: IPv4Address | None = None,
                 max_conflicts: int = 4, schedule: Schedule | None = None) -> None:
        if protocol is MappingProtocol.NATPMP and external_ip is None:
            raise ValueError("NAT-PMP mappings need the external address (from a probe)")
        if protocol is MappingProtocol.UPNP:
            raise ValueError("UPnP-IGD mappings are not datagram sessions")
        self.protocol, self.transport, self.internal_port = protocol, transport, internal_port
        self.gateway = Endpoint(gateway, natpmp.SERVER_PORT)
        self._client_ip, self._lifetime, self._nonce = client_ip, lifetime, nonce
        self._rand, self._pick_port, self._external_ip = rand, pick_port, external_ip
        self._max_conflicts = max_conflicts
        self._schedule = schedule or (PCP_SCHEDULE if protocol is MappingProtocol.PCP
                                      else NATPMP_SCHEDULE)
        self._epoch = EpochTracker()
        self._state = _State.DONE
        self._suggested = internal_port
        self._conflicts = 0
        self._sends: Retransmission | None = None
        self._out: list[bytes] = []
        self.mapping: Mapping | None = None
        self.ignored = 0
        """Datagrams dropped: from elsewhere, malformed, or not an answer to this session."""

    # --- inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Ask for the mapping (again, if one is held: a renewal)."""
        self._state = _State.REQUESTING
        self._sends = Retransmission(self._schedule, now, self._rand)
        self._send_if_due(now)

    def release(self, now: float) -> list[MappingEvent]:
        """Delete the mapping: Released at once if none is held, else after the gateway's
        answer or the last retransmission."""
        if self.mapping is None:
            self._state = _State.DONE
            return [Released()]
        self._state = _State.RELEASING
        self._sends = Retransmission(RELEASE_SCHEDULE, now, self._rand)
        self._send_if_due(now)
        return []

    def receive(self, data: bytes, source: Endpoint, now: float) -> list[MappingEvent]:
        if source != self.gateway or self._state in (_State.DONE, _State.MAPPED):
            self.ignored += 1
            return []
        try:
            reply = self._parse(data)
        except RemoteProtocolError:
            reply = None
        if reply is None:
            self.ignored += 1
            return []
        if self._state is _State.RELEASING:
            self._state, self.mapping = _State.DONE, None
            return [Released()]
        events: list[MappingEvent] = []
        if self._epoch.observe(reply.epoch, now) and self.mapping is not None:
            events.append(Lost(self.mapping, "gateway-rebooted"))
            self.mapping = None
        return events + self._answered(reply, now)

    def announced(self, data: bytes, source: Endpoint, now: float) -> list[MappingEvent]:
        """An unsolicited announcement from the gateway (multicast to 224.0.0.1:5350: a PCP
        ANNOUNCE, RFC 6887 §14.1.3; a NAT-PMP address response, RFC 6886 §3.2.1). If its
        the mapping is asked for again now (the gateway restarted or its address changed)."""
        epoch = self._announced_epoch(data) if source == self.gateway else None
        if epoch is None or self._state is not _State.MAPPED or self.mapping is None:
            self.ignored += 1
            return []
        # A gateway announces when it restarted or its external address changed (RFC 6887
        # §14.1.3, RFC 6886 §3.2.1); both need the mapping asked for again, and a restart soon
        # after the previous answer does not show in the epochs (§8.5 allows 2 s of slack).
        self._epoch.observe(epoch, now)
        lost, self.mapping = self.mapping, None
        self.start(now)
        return [Lost(lost, "gateway-rebooted")]

    def _announced_epoch(self, data: bytes) -> int | None:
        try:
            if self.protocol is MappingProtocol.PCP:
                answer = pcp.decode_response(data)
                ok = answer.opcode is pcp.Opcode.ANNOUNCE
                return answer.epoch if ok and answer.result is pcp.ResultCode.SUCCESS else None
            message = natpmp.decode_response(data)
        except RemoteProtocolError:
            return None
        ok = (isinstance(message, natpmp.AddressResponse)
              and message.result is natpmp.ResultCode.SUCCESS)
        return message.epoch if ok else None

    def handle_timer(self, now: float) -> list[MappingEvent]:
        if self._state is _State.MAPPED and self.mapping is not None:
            if now >= self.mapping.renew_at:
                self.start(now)
            return []
        if self._state in (_State.REQUESTING, _State.RELEASING):
            self._send_if_due(now)
            assert self._sends is not None
            if self.mapping is not None and now >= self.mapping.expires_at:
                lost, self.mapping = self.mapping, None
                if self._state is _State.RELEASING:
                    self._state = _State.DONE
                    return [Released()]
                return [Lost(lost, "expired"), *self._give_up_if_done(now)]
            return self._give_up_if_done(now)
        return []

    # --- outputs -----------------------------------------------------------------------------

    def pop_datagrams(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        if self._state is _State.MAPPED and self.mapping is not None:
            return self.mapping.renew_at
        if self._state in (_State.REQUESTING, _State.RELEASING) and self._sends is not None:
            timer = self._sends.get_timer()
            return timer if self.mapping is None else min(timer, self.mapping.expires_at)
        return None

    @property
    def done(self) -> bool:
        """Released, failed for good, or never started."""
        return self._state is _State.DONE

    # --- internals ---------------------------------------------------------------------------

    def _give_up_if_done(self, now: float) -> list[MappingEvent]:
        assert self._sends is not None
        if not self._sends.gave_up(now):
            return []
        if self._state is _State.RELEASING:
            self._state, self.mapping = _State.DONE, None
            return [Released()]
        if self.mapping is not None:  # a renewal unanswered: try again until expiry
            self.start(now)
            return []
        self._state = _State.DONE
        return [Failed(f"{self.protocol}: no answer from the gateway")]

    def _send_if_due(self, now: float) -> None:
        assert self._sends is not None
        if self._sends.due(now):
            releasing = self._state is _State.RELEASING
            self._out.append(self._request(0 if releasing else self._lifetime,
                                           0 if releasing else self._suggested))

    def _request(self, lifetime: int, suggested: int) -> bytes:
        if self.protocol is MappingProtocol.PCP:
            return pcp.map_request(self._client_ip, self._nonce, self.transport,
                                   self.internal_port, suggested, lifetime)
        return natpmp.map_request(self.transport, self.internal_port, suggested, lifetime)

    def _answered(self, reply: _Reply, now: float) -> list[MappingEvent]:
        if reply.ok and reply.external is not None and reply.lifetime > 0:
            renewal = self.mapping is not None and self.mapping.external == reply.external
            self.mapping = Mapping(self.protocol, self.transport, self.internal_port,
                                   reply.external, float(reply.lifetime), now)
            self._state, self._conflicts = _State.MAPPED, 0
            return [Obtained(self.mapping, renewal)]
        if reply.conflict and self._conflicts < self._max_conflicts:
            self._conflicts += 1
            self._suggested = self._pick_port()
            self.start(now)
            return []
        self._state, self.mapping = _State.DONE, None
        retry = float(reply.lifetime) if self.protocol is MappingProtocol.PCP else None
        return [Failed(f"{self.protocol}: the gateway answered {reply.code}", reply.code,
                       retry if retry else None)]

    def _parse(self, data: bytes) -> _Reply | None:
        if self.protocol is MappingProtocol.PCP:
            r = pcp.decode_response(data)
            if (r.opcode is not pcp.Opcode.MAP or r.nonce != self._nonce
                    or r.protocol != pcp.PROTOCOLS[self.transport]
                    or r.internal_port != self.internal_port):
                return None
            ok = r.result is pcp.ResultCode.SUCCESS
            external = (Endpoint(r.external_ip, r.external_port) if ok and r.external_ip
                        and r.external_port else None)
            return _Reply(ok, r.result.name, r.epoch, r.lifetime, external,
                          r.result in _PCP_CONFLICT)
        m = natpmp.decode_response(data)
        if (not isinstance(m, natpmp.MapResponse) or m.opcode is not natpmp.map_opcode(
                self.transport) or (m.internal_port not in (0, self.internal_port))):
            return None
        ok = m.result is natpmp.ResultCode.SUCCESS and m.internal_port == self.internal_port
        assert self._external_ip is not None
        external = Endpoint(self._external_ip, m.external_port) if ok and m.external_port else None
        return _Reply(ok, m.result.name, m.epoch, m.lifetime, external, conflict=False)
