"""Debian's `miniupnpd` (package miniupnpd-nftables: UPnP-IGD, NAT-PMP, PCP) on a lab router.

It runs in the router's namespace with its own config file and pid file, in the foreground
(`-d`, its log to a file), and is killed by pid with the lab. Its rules go into chains the
router's ruleset already holds (`nat_rules.ruleset` with `port_mapping`): the filter chain
`miniupnpd` of table `inet fw` (jumped to from the forward hook) and the nat chains of table
`inet upnpnat`. miniupnpd refuses to map on an external address it thinks reserved
(198.18.0.0/15 is, RFC 2544), so such a router's WAN sits on `netlab.MAPPING_PREFIX`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

FILTER_TABLE, NAT_TABLE = "fw", "upnpnat"
FORWARD_CHAIN = "miniupnpd"
NAT_CHAINS = ("prerouting_miniupnpd", "postrouting_miniupnpd")

NFT_TABLE = f"""
table inet {NAT_TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump {NAT_CHAINS[0]}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 1; policy accept;
    jump {NAT_CHAINS[1]}
  }}
  chain {NAT_CHAINS[0]} {{
  }}
  chain {NAT_CHAINS[1]} {{
  }}
}}
"""


def chains() -> list[tuple[str, str]]:
    """(table, chain) of every chain miniupnpd writes its rules into."""
    return [(FILTER_TABLE, FORWARD_CHAIN), *((NAT_TABLE, c) for c in NAT_CHAINS)]


def config(lan_prefix: str, uuid_tail: int) -> str:
    """A miniupnpd.conf: every protocol on, mappings only for the LAN's own hosts (secure
    mode), epochs that restart with the daemon (a restart is a router reboot)."""
    return f"""ext_ifname=wan
listening_ip=lanbr
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
min_lifetime=120
max_lifetime=86400
upnp_table_name={FILTER_TABLE}
upnp_nat_table_name={NAT_TABLE}
upnp_forward_chain={FORWARD_CHAIN}
upnp_nat_chain={NAT_CHAINS[0]}
upnp_nat_postrouting_chain={NAT_CHAINS[1]}
uuid=3e1e0f2a-1d3a-4f4e-9b7a-{uuid_tail:012d}
allow 1024-65535 {lan_prefix}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


def start(ns: str, workdir: Path, lan_prefix: str, number: int) -> subprocess.Popen[bytes]:
    """Start miniupnpd in `ns`; returns once it listens for NAT-PMP/PCP (at most 10 s)."""
    conf, pid, log = (workdir / f"miniupnpd-{number}.{ext}" for ext in ("conf", "pid", "log"))
    conf.write_text(config(lan_prefix, number))
    skip = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
    with log.open("ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "miniupnpd", "-f", str(conf), "-d",
                                 "-P", str(pid)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while b"Listening for NAT-PMP/PCP" not in log.read_bytes()[skip:]:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"miniupnpd did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)  # polling a log file: miniupnpd has no readiness notification
    return proc
