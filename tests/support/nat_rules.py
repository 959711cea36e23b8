"""The nftables rulesets of the lab's routers (loaded with `nft -f -` in the router namespace).

Every kind is Linux masquerade behind a stateful firewall (netlab.py's docstring says which
kind is which in RFC 4787 terms). Linux NAT does not hairpin by itself: a packet from the LAN
to the router's own public address is delivered to the router, which drops it. Two kinds of
hairpin are built here:

- a PORT_FORWARD router's forwarded port (a static DNAT matched on the public address, so the
  LAN can use it too);
- a carrier-grade NAT's every mapping (`carrier_hairpin`). The router learns its mappings from
  its own connection tracking: a filter chain after source NAT (postrouting, priority 200)
  puts each source-NATed flow's public port and inside endpoint into dynamic maps, both ways,
  refreshed by every packet the flow sends and forgotten `timeout` seconds after its last one.
  A new flow from the LAN to the public address and a mapped port is destination-NATed to the
  inside endpoint behind that port (`dnat ip to udp dport map`), and source-NATed to the
  sender's own mapping (public address and port, looked up the other way), so the receiver
  sees the same endpoint a peer outside would, and its replies come back through the router.
  A sender with no mapping yet gets a fresh port on the public address. Only packets arriving
  on the LAN are turned around: from outside, an unsolicited packet to a mapped port is still
  dropped (the filtering stays address-and-port-dependent).

  Limits (it is a lab, not a CGNAT): a map entry keeps its first inside endpoint while any flow
  on that public port refreshes it, and Linux masquerade only keeps reply tuples unique, so two
  inside endpoints can share a public port towards different destinations; the first to use a
  port owns its hairpin. Hosts of the lab talk to the same reflectors first, which gives them
  different ports.
"""

from __future__ import annotations

from tests.support import miniupnpd

HAIRPIN_TABLE = "hairpin"


def _carrier_hairpin(public_ip: str, lan: str, *, symmetric: bool, timeout: int) -> str:
    """The table that makes a carrier-grade NAT hairpin every mapping (see the docstring)."""
    maps, learn, turn, source = [], [], [], []
    for proto in ("udp", "tcp"):
        maps.append(f"""
  map {proto}_inside {{
    typeof {proto} dport : ip daddr . {proto} dport; flags dynamic,timeout; timeout {timeout}s;
  }}
  map {proto}_public {{
    typeof ip saddr . {proto} sport : ip saddr . {proto} sport; flags dynamic,timeout;
    timeout {timeout}s;
  }}""")
        learn.append(
            f"ct direction original ct status snat meta l4proto {proto} "
            f"update @{proto}_inside {{ ct reply proto-dst : ct original ip saddr . "
            f"ct original proto-src }} "
            f"update @{proto}_public {{ ct original ip saddr . ct original proto-src : "
            f"ct reply ip daddr . ct reply proto-dst }}")
        turn.append(f'iifname "lanbr" ip daddr {public_ip} meta l4proto {proto} '
                    f"dnat ip to {proto} dport map @{proto}_inside")
        if not symmetric:  # endpoint-independent: the sender's own mapping
            source.append(f'oifname "lanbr" ip saddr {lan}.0/24 ct status dnat '
                          f"meta l4proto {proto} snat ip to ip saddr . {proto} sport "
                          f"map @{proto}_public")
    fresh = " random,fully-random" if symmetric else ""
    source.append(f'oifname "lanbr" ip saddr {lan}.0/24 ct status dnat snat ip to '
                  f"{public_ip}{fresh}")
    nl = "\n    "
    return f"""
table ip {HAIRPIN_TABLE} {{{"".join(maps)}
  chain learn {{
    type filter hook postrouting priority 200; policy accept;
    {nl.join(learn)}
  }}
  chain turn {{
    type nat hook prerouting priority dstnat; policy accept;
    {nl.join(turn)}
  }}
  chain source {{
    type nat hook postrouting priority srcnat; policy accept;
    {nl.join(source)}
  }}
}}"""


def ruleset(nat: str, first_host: str | None, forwarded_port: int, wan_ip: str,
            hairpin_lan: str | None, port_mapping: bool = False, *, carrier: bool = False,
            hairpin_timeout: int = 120, nat64: str | None = None) -> str:
    """The router's ruleset for a `netlab.Nat` kind (its value: "cone", "symmetric", ...).

    `hairpin_lan` (the LAN's first three octets) makes a PORT_FORWARD router's forwarded
    port, or a `carrier` router's every mapping, work from inside its LAN too. `nat64`: the
    NAT64 TUN device (tests/support/nat64.py), whose packets are the LAN's own, translated:
    forwarded out like the LAN's (what comes back in still needs an established flow).
    """
    symmetric = nat == "symmetric"
    masquerade = "masquerade random,fully-random" if symmetric else "masquerade"
    block_udp = 'iifname "lanbr" meta l4proto udp drop' if nat == "udp-blocked" else ""
    dnat = allow_fwd = hairpin_snat = hairpin_table = ""
    if nat == "port-forward" and first_host is not None:
        # without hairpin only packets arriving on the WAN are forwarded
        match = f"ip daddr {wan_ip}" if hairpin_lan else 'iifname "wan"'
        dnat = f"""
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {match} meta l4proto {{ tcp, udp }} th dport {forwarded_port} dnat to {first_host}
  }}"""
        allow_fwd = "ct status dnat accept"
        if hairpin_lan:  # hairpinned replies must come back through the router
            hairpin_snat = (f'oifname "lanbr" ip saddr {hairpin_lan}.0/24 ct status dnat '
                            "masquerade")
    elif carrier and hairpin_lan:
        hairpin_table = _carrier_hairpin(wan_ip, hairpin_lan, symmetric=symmetric,
                                         timeout=hairpin_timeout)
    from_nat64 = f'iifname "{nat64}" accept' if nat64 else ""
    upnp_jump = f"jump {miniupnpd.FORWARD_CHAIN}" if port_mapping else ""
    upnp_chain = f"chain {miniupnpd.FORWARD_CHAIN} {{\n  }}" if port_mapping else ""
    upnp_nat = miniupnpd.NFT_TABLE if port_mapping else ""
    return f"""
table ip nat {{{dnat}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" {masquerade}
    {hairpin_snat}
  }}
}}
table inet fw {{
  chain forward_filter {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    {upnp_jump}
    {allow_fwd}
    {block_udp}
    iifname "lanbr" accept
    {from_nat64}
  }}
  chain input_filter {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
    iifname {{ "lo", "lanbr" }} accept
  }}
  {upnp_chain}
}}
{upnp_nat}{hairpin_table}"""
