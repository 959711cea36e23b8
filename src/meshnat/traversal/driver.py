"""The trio driver of `TraversalSession`s: one loop per traversal that feeds the session the
probes its carrier receives and its timers, and executes the session's actions.

Inputs from elsewhere (a take, the peer's `Take`, a connection) are fed by the task that has
them, which then calls `drain` itself, so a failing action (a listener that cannot bind)
raises to that caller; `Traversal.acting` keeps every action executed once and in order.
"""

from __future__ import annotations

import logging
import math

import trio

from meshnat.endpoint import Endpoint
from meshnat.errors import MeshNatError
from meshnat.traversal.core import (
    Action,
    Dial,
    Expired,
    Expiry,
    Listen,
    SendProbe,
    StopCarrier,
)
from meshnat.traversal.early import EarlyStep, Step
from meshnat.traversal.handover import Handover
from meshnat.traversal.messages import Probe
from meshnat.traversal.session import Traversal

log = logging.getLogger(__name__)


class Driver:
    """Runs traversals' sessions; Listen and Dial go to the `Handover`."""

    def __init__(self, handover: Handover) -> None:
        self._handover = handover

    async def run(self, traversal: Traversal) -> None:
        """The traversal's loop: until it is forgotten (`traversal.running` cancelled)."""
        session = traversal.session
        with traversal.running:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, traversal)
                while True:
                    try:
                        await self.drain(traversal)
                    except (MeshNatError, OSError) as exc:  # an action of a timer's failed
                        log.warning("traversal %s: %s", traversal.id, exc)
                    timer = session.get_timer()
                    with trio.move_on_at(math.inf if timer is None else timer):
                        await traversal.wake.wait()
                    traversal.wake = trio.Event()
                    session.handle_timer(trio.current_time())

    async def _receive(self, traversal: Traversal) -> None:
        carrier = traversal.carrier
        if carrier is None:
            return

        def on_probe(probe: Probe, src: Endpoint) -> None:
            traversal.session.receive_probe(probe, src, trio.current_time())
            traversal.wake.set()

        with traversal.receiving:
            try:
                await carrier.run(on_probe)
            except (OSError, trio.ClosedResourceError) as exc:
                # a socket closed by StopCarrier while a datagram woke its reader: done
                if not traversal.closed:
                    log.warning("traversal %s: receiving failed: %s", traversal.id, exc)

    async def drain(self, traversal: Traversal) -> None:
        """Execute the session's pending actions, in order; the first error of one is raised
        once all have run."""
        async with traversal.acting:
            actions: list[Action] = []
            while (action := traversal.session.next_action()) is not None:
                actions.append(action)
            failure: BaseException | None = None
            for action in actions:
                try:
                    await self._execute(traversal, action)
                except (MeshNatError, OSError) as exc:
                    failure = failure or exc
            traversal.notify()
        if failure is not None:
            raise failure

    async def _execute(self, traversal: Traversal, action: Action) -> None:
        match action:
            case SendProbe(dst, datagram, kind):
                carrier = traversal.carrier
                if carrier is None:
                    return
                try:
                    await carrier.send(datagram, dst)
                except (OSError, MeshNatError, trio.ClosedResourceError) as exc:
                    log.debug("traversal %s: %s to %s failed: %s", traversal.id, kind.value,
                              dst, exc)
            case StopCarrier():
                traversal.stop()
            case Listen(pair):
                await self._handover.listen(traversal, pair)
            case Dial(pair):
                self._handover.dial_soon(traversal, pair)
            case EarlyStep(Step.DIAL, remote):
                self._handover.dial_early(traversal, remote)
            case EarlyStep(Step.REPLAY, remote):
                self._handover.replay_first_flight(remote)
            case EarlyStep(Step.ABANDON, remote):
                self._handover.abandon_early(traversal, remote)
            case Expired(pair, cause):
                log.info("traversal %s: pair %s expired (%s)", traversal.id, pair.id,
                         cause.value)
                if cause is not Expiry.SILENT:
                    await self._handover.close_listener(traversal)
