"""`meshnat up` through real NATs: every node is started with the two bootstrap addresses only.

Two public bootstrap nodes and eight nodes in six kinds of place (two public hosts, two cone
sites, two symmetric sites, a UDP-blocked site and a port-forward site), each site on its own
/24 (the lab fixture with `spread_networks=True`): every node must find its own reachability
by dial-backs and its public address (behind a symmetric NAT: its public IP, and a record of
relay circuits), publish its record, and reach every other node by peer id alone. Paths: a
public node is reached directly by anyone, and reaches a NATed one directly (over the NATed
node's own connection); two cone sites punch; a pair with no UDP path to punch (symmetric with
symmetric or with the UDP-blocked site) stays relayed; a cone site and a symmetric one punch
by birthday probing (each side's hint comes from its own discovery rounds).
Then one bootstrap node is killed: a node that joins through both bootstrap addresses (one
dead) still reaches every node left, and no NATed node keeps a reservation on the dead one.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.lab.test_chat_lab import Member
from tests.support.netlab import Host, Lab, Nat

pytestmark = pytest.mark.lab

DEADLINE = 180.0
"""Seconds for each node's condition (a joined mesh, or all its connects)."""


def up(host: Host, name: str, bootstrap: list[str], logs: Path) -> Member:
    args = ["-m", "meshnat", "-v", "up", "--json"]
    for addr in bootstrap:
        args += ["--bootstrap", addr]
    member = Member(name, host.popen(host.python(*args), stdin=True,
                                     stderr=logs / f"{name}.log"))
    member.read_until(lambda ev: any(e["event"] == "ready" for e in ev), timeout=60)
    return member


def peer_id(member: Member) -> str:
    return next(str(e["peer_id"]) for e in member.events if e["event"] == "ready")


def tcp_addr(member: Member, ip: str) -> str:
    ready = next(e for e in member.events if e["event"] == "ready")
    addrs = ready["addrs"]
    assert isinstance(addrs, list)
    return next(a for a in addrs if a.startswith(f"/ip4/{ip}/tcp/"))


def latest(member: Member, what: str) -> dict[str, object] | None:
    return next((e for e in reversed(member.events) if e["event"] == what), None)


def joined(member: Member, reachability: str, public_ip: str, *, symmetric: bool = False
           ) -> bool:
    """Its reachability is the one expected and its published record names its public IP;
    behind a symmetric NAT (no port any two reflectors agree on: no address to publish) its
    NAT report names that IP alone and its record its relays."""
    status = latest(member, "reachability")
    if status is None or status["reachability"] != reachability:
        return False
    published = [e["addrs"] for e in member.events if e["event"] == "published"]
    if not symmetric:
        return any(f"/ip4/{public_ip}/" in a for addrs in published for a in addrs)  # type: ignore[attr-defined]
    report = latest(member, "nat-report")
    return (report is not None and report["nat_type"] == "symmetric"
            and {a.rsplit(":", 1)[0] for a in report["public_addrs"]} == {public_ip}  # type: ignore[attr-defined]
            and any("/p2p-circuit" in a for addrs in published for a in addrs))  # type: ignore[attr-defined]


def reported(member: Member, peer: str) -> list[str]:
    """The paths `member` reported to `peer`: its connects', then its punches' upgrades."""
    return [str(e["path"]) for e in member.events
            if e["event"] in ("connected", "path-upgraded") and str(e.get("peer")) == peer]


def punched(members: dict[str, Member], ids: dict[str, str], a: str, b: str) -> bool:
    """Did either side of the pair report a punched path to the other?"""
    return "punched" in reported(members[a], ids[b]) + reported(members[b], ids[a])


def pair_path(members: dict[str, Member], ids: dict[str, str], a: str, b: str) -> str:
    """The best path `a` has to `b` by what both sides reported: a punch by either side is
    the pair's (one connection serves both), else `a`'s own connect's path."""
    return "punched" if punched(members, ids, a, b) and reported(members[a], ids[b])[-1] \
        != "direct" else reported(members[a], ids[b])[-1]


def connect_all(member: Member, targets: dict[str, str]) -> dict[str, dict[str, object]]:
    """Ask `member` to connect to every peer id in `targets` (name -> id); name -> outcome."""
    assert member.proc.stdin is not None
    for peer in targets.values():
        member.proc.stdin.write(f"connect {peer}\n")
    member.proc.stdin.flush()
    names = {peer: name for name, peer in targets.items()}

    def outcomes() -> dict[str, dict[str, object]]:
        return {names[str(e["peer"])]: e for e in member.events
                if e["event"] in ("connected", "connect-failed") and str(e["peer"]) in names}

    member.read_until(lambda _: len(outcomes()) == len(targets), timeout=DEADLINE)
    return outcomes()


@pytest.mark.parametrize("lab", [{"spread_networks": True}], indirect=True)
def test_nodes_behind_every_kind_of_nat_join_from_bootstrap_addresses_and_reach_all_by_id(
        lab: Lab, tmp_path: Path) -> None:
    boot_hosts = [lab.public_host("boot1"), lab.public_host("boot2")]
    boot1 = up(boot_hosts[0], "boot1", [], tmp_path)
    boot2 = up(boot_hosts[1], "boot2", [tcp_addr(boot1, boot_hosts[0].ip)], tmp_path)
    bootstrap = [tcp_addr(boot1, boot_hosts[0].ip), tcp_addr(boot2, boot_hosts[1].ip)]
    places: dict[str, tuple[Host, str, str]] = {}  # name -> host, public IP, reachability
    for name in ("pub1", "pub2"):
        host = lab.public_host(name)
        places[name] = (host, host.ip, "public")
    for name, nat in (("cone1", Nat.CONE), ("cone2", Nat.CONE), ("sym1", Nat.SYMMETRIC),
                      ("sym2", Nat.SYMMETRIC), ("udpblk", Nat.UDP_BLOCKED),
                      ("fwd", Nat.PORT_FORWARD)):
        site = lab.site(name, nat)
        places[name] = (site.hosts[0], site.public_ip,
                        "public" if nat is Nat.PORT_FORWARD else "private")
    members = {"boot1": boot1, "boot2": boot2}
    for name, (host, _, _) in places.items():
        members[name] = up(host, name, bootstrap, tmp_path)
    expected = {"boot1": (boot_hosts[0].ip, "public"), "boot2": (boot_hosts[1].ip, "public"),
                **{n: (ip, r) for n, (_, ip, r) in places.items()}}
    for name, member in members.items():
        ip, reachability = expected[name]
        sym = name.startswith("sym")
        member.read_until(lambda _, m=member, i=ip, r=reachability, s=sym:
                          joined(m, r, i, symmetric=s), timeout=DEADLINE)

    ids = {name: peer_id(m) for name, m in members.items()}
    outcomes = {name: connect_all(m, {o: ids[o] for o in members if o != name})
                for name, m in members.items()}
    failed = {(a, b): o.get("error") for a, out in outcomes.items() for b, o in out.items()
              if o["event"] != "connected" or not o["echo_ok"]}
    assert not failed, failed
    kinds = {(a, b): str(o["path"]) for a, out in outcomes.items() for b, o in out.items()}
    for (a, b), kind in kinds.items():  # a public node is reached directly by anyone
        if expected[b][1] == "public":
            assert kind == "direct", (a, b, kind)
    # two cone NATs punch (either side's connect, or its background punch, says so)
    cone_sym = [(c, y) for c in ("cone1", "cone2") for y in ("sym1", "sym2")]
    for a, b in (("cone1", "cone2"), ("cone2", "cone1"), *cone_sym):  # and birthday probing
        members[a].read_until(lambda _, a=a, b=b: punched(members, ids, a, b), timeout=DEADLINE)
    finals = {(a, b): pair_path(members, ids, a, b) for (a, b) in kinds}
    for (a, b), kind in finals.items():
        if {a[:3], b[:3]} <= {"sym", "udp"}:  # no UDP, or both symmetric: nothing to punch
            assert kind == "relayed", (a, b, kind)
        elif {a[:3], b[:3]} == {"con", "sym"}:
            assert kind == "punched", (a, b, kind)
        elif expected[a][1] == "public" or expected[b][1] == "public":
            assert kind == "direct", (a, b, kind)  # the NATed side's own connection
    shares = {k: sum(v == k for v in finals.values()) for k in ("direct", "punched", "relayed")}
    print("paths:", sorted(finals.items()), "pairs by path:", shares, f"of {len(finals)}")

    # one bootstrap node gone: nothing that needed it is lost
    gone = ids["boot1"]
    boot1.proc.send_signal(signal.SIGKILL)
    for name in ("cone1", "sym1", "udpblk"):
        member = members[name]
        member.read_until(lambda _, m=member: (relays := latest(m, "relays")) is not None
                          and len(relays["relays"]) == 2  # type: ignore[arg-type]
                          and not any(gone in r for r in relays["relays"]),  # type: ignore[attr-defined]
                          timeout=DEADLINE)
    late_site = lab.site("late", Nat.CONE)
    late = up(late_site.hosts[0], "late", bootstrap, tmp_path)
    late.read_until(lambda _: joined(late, "private", late_site.public_ip), timeout=DEADLINE)
    left = {n: ids[n] for n in members if n != "boot1"}
    late_out = connect_all(late, left)
    assert all(o["event"] == "connected" and o["echo_ok"] for o in late_out.values()), late_out
