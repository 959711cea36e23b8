"""How a mounted service is kept running: started once, restarted after a failure with a
backoff, and the node stopped with ServiceFailed once it fails too often (`MeshNode.mount`)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from meshnat._libp2p import TaskStatus
from meshnat.errors import ServiceFailed
from meshnat.node_config import NodeConfig

log = logging.getLogger(__name__)

MAX_RESTART_BACKOFF = 5.0
"""Longest wait before a failed service is restarted."""


class StartedFlag:
    """A task_status that remembers whether started() was called."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self._inner, self.is_set = inner, False

    def started(self, value: None = None) -> None:
        self.is_set = True
        self._inner.started(value)


@dataclass(slots=True)
class Mounted:
    """One mounted service: cancelling `scope` unmounts it; `done` is set once it is gone."""

    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


async def supervise(name: str, serve: Callable[[TaskStatus[None]], Awaitable[None]],
                    config: NodeConfig, entry: Mounted, task_status: TaskStatus[None]) -> None:
    """Run `serve` inside `entry.scope` until it returns or is cancelled. A failure before it
    started is raised (mount() reports it); a later one is logged at ERROR and restarted after
    a backoff, or raised as ServiceFailed past `config.service_restarts` failures within
    `config.service_restart_window`."""
    first = StartedFlag(task_status)
    failures: deque[float] = deque()
    with entry.scope:  # unmount() cancels it, also during a backoff
        status = first
        while True:
            try:
                await serve(status)
                return  # the service ended by itself
            except Exception as exc:
                if not first.is_set:
                    raise  # mount() reports it to the caller
                now = trio.current_time()
                failures.append(now)
                while failures[0] <= now - config.service_restart_window:
                    failures.popleft()
                if len(failures) > config.service_restarts:
                    log.error("service %s failed %d times within %g s; stopping the node",
                              name, len(failures), config.service_restart_window,
                              exc_info=True)
                    raise ServiceFailed(name, len(failures),
                                        config.service_restart_window) from exc
                delay = min(config.service_restart_backoff * 2 ** (len(failures) - 1),
                            MAX_RESTART_BACKOFF)
                log.error("service %s failed; restarting it in %.2f s (failure %d of %d "
                          "allowed within %g s)", name, delay, len(failures),
                          config.service_restarts, config.service_restart_window,
                          exc_info=True)
            await trio.sleep(delay)
            status = StartedFlag(trio.TASK_STATUS_IGNORED)
