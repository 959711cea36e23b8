"""The lab's machines: a NAT kind, a host (a namespace with addresses that runs commands) and a
site (a router with the hosts behind it). The lab that builds them: tests/support/netlab.py."""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import selectors
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.netlab import Lab


class Nat(enum.StrEnum):
    CONE = "cone"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"
    PORT_FORWARD = "port-forward"


@dataclass
class Host:
    """One machine of the lab: a namespace with one address."""

    ns: str
    ip: str
    """Its IPv4 address (an IPv6-only host's IPv6 address)."""
    lab: Lab = field(repr=False)
    ip6: str | None = None
    """Its global IPv6 address (public hosts, hosts of an `ipv6` site), else None."""

    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a command in this host's namespace; a hang fails the test after `timeout`."""
        return subprocess.run(self.cmd(args), capture_output=True, text=True, timeout=timeout)

    def popen(self, args: Sequence[str], *, stdin: bool = False,
              stderr: Path | None = None) -> subprocess.Popen[str]:
        """Start a background process in this host; the lab kills it on close. `stderr`: a
        file for its log (a pipe nobody reads fills up and blocks a talkative process)."""
        with contextlib.ExitStack() as files:
            err = subprocess.PIPE if stderr is None else files.enter_context(stderr.open("a"))
            proc = subprocess.Popen(
                self.cmd(args), stdout=subprocess.PIPE, stderr=err, text=True,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            )
        self.lab.processes.append(proc)
        return proc

    def start_json(self, args: Sequence[str], *, timeout: float) -> tuple[subprocess.Popen[str],
                                                                         dict[str, object]]:
        """Start a background process and wait (at most `timeout`) for its first JSON line."""
        proc = self.popen(args)
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"{' '.join(args)} printed nothing in {timeout}s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{' '.join(args)} exited: {proc.communicate(timeout=5)[1]}")
        return proc, json.loads(line)

    def python(self, *args: str) -> list[str]:
        """Argv running this interpreter (the project's venv) with `args`."""
        return [sys.executable, *args]


@dataclass
class Site:
    """A router with a NAT of one kind, and the hosts behind it."""

    name: str
    nat: Nat
    router: Host
    lan_prefix: str
    hosts: list[Host] = field(default_factory=list)
    port_mapping: bool = False
    """Its router runs miniupnpd."""
    lan6_prefix: str | None = None
    """The LAN's IPv6 /64 as `2001:db8:<n>:` (an `ipv6` site), else None."""
    nat64: bool = False
    """An `ipv6_only` site: its router translates NAT64 (tests/support/nat64.py)."""
    _lan_ips: Iterator[int] = field(default_factory=lambda: itertools.count(10), repr=False)

    @property
    def public_ip(self) -> str:
        return self.router.ip

    @property
    def lan_gateway(self) -> str:
        return f"{self.lan_prefix}.1"

    def next_lan_ip(self) -> str:
        return f"{self.lan_prefix}.{next(self._lan_ips)}"

    @property
    def ipv6(self) -> bool:
        return self.lan6_prefix is not None
