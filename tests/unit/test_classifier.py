"""Classification logic on recorded observation sets, the probe plan and the derived names."""

from __future__ import annotations

from itertools import permutations

import pytest

from meshnat.classify.classifier import (
    MappingObservation,
    classify_filtering,
    classify_mapping,
    classify_port_allocation,
)
from meshnat.classify.plan import ReflectorPorts, make_probe_plan
from meshnat.classify.report import Filtering, Mapping, NatReport, NatType, PortAllocation
from meshnat.endpoint import Endpoint

E = Endpoint.parse
A1, A2, B1, B2 = E("198.18.0.10:4001"), E("198.18.0.10:4002"), E("198.18.0.11:4001"), \
    E("198.18.0.11:4002")
LOCAL = E("10.1.0.10:4001")


def seen(*pairs: tuple[Endpoint, str]) -> list[MappingObservation]:
    return [MappingObservation(dst, E(mapped)) for dst, mapped in pairs]


@pytest.mark.parametrize(("observations", "expected"), [
    (seen((A1, "1.1.1.1:7"), (A2, "1.1.1.1:7"), (B1, "1.1.1.1:7"), (B2, "1.1.1.1:7")),
     Mapping.ENDPOINT_INDEPENDENT),
    (seen((A1, "1.1.1.1:7"), (A2, "1.1.1.1:7"), (B1, "1.1.1.1:8"), (B2, "1.1.1.1:8")),
     Mapping.ADDRESS_DEPENDENT),
    (seen((A1, "1.1.1.1:7"), (A2, "1.1.1.1:8"), (B1, "1.1.1.1:9"), (B2, "1.1.1.1:10")),
     Mapping.ADDRESS_AND_PORT_DEPENDENT),
    (seen((A1, "1.1.1.1:7"), (A2, "1.1.1.1:7"), (B1, "1.1.1.1:9"), (B2, "1.1.1.1:10")),
     Mapping.ADDRESS_AND_PORT_DEPENDENT),  # port-dependent at B
    (seen((A1, "1.1.1.1:7"), (B1, "1.1.1.1:7"), (B2, "1.1.1.1:7")),  # A's 2nd port silent
     Mapping.ENDPOINT_INDEPENDENT),
    (seen((A1, "1.1.1.1:7"), (B1, "2.2.2.2:7")), None),       # no two ports on one IP
    (seen((A1, "1.1.1.1:7"), (A2, "1.1.1.1:7")), None),       # one IP only
    ([], None),
])
def test_mapping_behaviour(observations: list[MappingObservation], expected: Mapping | None
                           ) -> None:
    assert classify_mapping(observations) == expected


def test_mapping_verdict_does_not_depend_on_the_order_observations_are_listed() -> None:
    base = seen((A1, "1.1.1.1:7"), (A2, "1.1.1.1:7"), (B1, "1.1.1.1:8"), (B2, "1.1.1.1:8"))
    assert {classify_mapping(list(p)) for p in permutations(base)} == {Mapping.ADDRESS_DEPENDENT}


@pytest.mark.parametrize(("other_port", "other_ip", "expected"), [
    (True, True, Filtering.ENDPOINT_INDEPENDENT),
    (False, True, Filtering.ENDPOINT_INDEPENDENT),
    (None, True, Filtering.ENDPOINT_INDEPENDENT),     # B got through: nothing else matters
    (True, False, Filtering.ADDRESS_DEPENDENT),
    (False, False, Filtering.ADDRESS_AND_PORT_DEPENDENT),
    (True, None, None),                                # no second IP: EIF vs ADF unknown
    (False, None, None),
    (None, False, None),                               # no second port: ADF vs APDF unknown
    (None, None, None),
])
def test_filtering_behaviour(other_port: bool | None, other_ip: bool | None,
                             expected: Filtering | None) -> None:
    assert classify_filtering(other_port, other_ip) == expected


@pytest.mark.parametrize(("ports", "expected"), [
    ([4001, 4001, 4001, 4001], (PortAllocation.PRESERVED, None)),
    ([50000, 50001, 50002, 50003], (PortAllocation.SEQUENTIAL, 1)),
    ([50000, 50002, 50002, 50004, 50006], (PortAllocation.SEQUENTIAL, 2)),
    ([61000, 1200, 33333, 47000], (PortAllocation.RANDOM, None)),
    ([50000, 50001, 50009], (PortAllocation.RANDOM, None)),
    ([5000, 5000, 5000], (None, None)),              # one mapping, not ours: can't tell
    ([5000, 5001], (None, None)),                    # two points always form a line
    ([], (None, None)),
])
def test_port_allocation(ports: list[int], expected: tuple[PortAllocation | None, int | None]
                         ) -> None:
    assert classify_port_allocation(LOCAL.port, ports) == expected


@pytest.mark.parametrize(("facts", "name"), [
    ({"udp_blocked": True}, NatType.UDP_BLOCKED),
    ({"behind_nat": False, "filtering": Filtering.ENDPOINT_INDEPENDENT}, NatType.OPEN),
    ({"behind_nat": False}, NatType.OPEN),
    ({"behind_nat": False, "mapping": Mapping.ENDPOINT_INDEPENDENT,
      "filtering": Filtering.ADDRESS_AND_PORT_DEPENDENT}, NatType.PORT_RESTRICTED_CONE),
    ({"behind_nat": True, "mapping": Mapping.ENDPOINT_INDEPENDENT,
      "filtering": Filtering.ENDPOINT_INDEPENDENT}, NatType.FULL_CONE),
    ({"behind_nat": True, "mapping": Mapping.ENDPOINT_INDEPENDENT,
      "filtering": Filtering.ADDRESS_DEPENDENT}, NatType.RESTRICTED_CONE),
    ({"behind_nat": True, "mapping": Mapping.ENDPOINT_INDEPENDENT,
      "filtering": Filtering.ADDRESS_AND_PORT_DEPENDENT}, NatType.PORT_RESTRICTED_CONE),
    ({"behind_nat": True, "mapping": Mapping.ADDRESS_DEPENDENT}, NatType.SYMMETRIC),
    ({"behind_nat": True, "mapping": Mapping.ADDRESS_AND_PORT_DEPENDENT,
      "filtering": Filtering.ADDRESS_AND_PORT_DEPENDENT}, NatType.SYMMETRIC),
    ({"behind_nat": True, "mapping": Mapping.ENDPOINT_INDEPENDENT}, NatType.UNKNOWN),
    ({"behind_nat": True}, NatType.UNKNOWN),
    ({}, NatType.UNKNOWN),
])
def test_classic_name_is_derived_from_the_facts(facts: dict, name: NatType) -> None:
    report = NatReport(local=LOCAL, **facts)
    assert report.nat_type is name
    assert report.to_json()["nat_type"] == str(name)


def test_report_json_uses_null_for_unmeasured_facts() -> None:
    body = NatReport(local=LOCAL, udp_blocked=False).to_json()
    assert body["mapping"] is None and body["filtering"] is None and body["hairpin"] is None
    assert body["udp_blocked"] is False and body["public_addrs"] == []


def ports(name: str, primary: Endpoint, alt: Endpoint | None) -> ReflectorPorts:
    return ReflectorPorts(name, primary, alt)


def test_plan_prefers_a_reflector_with_a_second_port_and_a_b_on_another_ip() -> None:
    plan = make_probe_plan([ports("x", A1, None), ports("y", E("198.18.0.10:5001"), A2),
                            ports("z", B1, B2)])
    assert plan is not None and plan.a.name == "y" and plan.b is not None and plan.b.name == "z"
    assert plan.mapping_destinations() == [A2, B1, B2]
    assert plan.c == plan.b and any("no third reflector IP" in n for n in plan.notes)
    third = ports("w", E("198.18.0.12:4001"), None)
    plan = make_probe_plan([ports("y", A1, A2), ports("z", B1, B2), third])
    assert plan is not None and plan.c == third and plan.notes == ()


def test_plan_with_one_ip_says_what_cannot_be_measured() -> None:
    plan = make_probe_plan([ports("x", A1, A2), ports("y", E("198.18.0.10:5001"), None)])
    assert plan is not None and plan.b is None
    assert any("two distinct IP addresses" in n for n in plan.notes)
    assert make_probe_plan([]) is None
