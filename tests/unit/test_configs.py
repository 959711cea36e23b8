"""Every config dataclass rejects bad values with a ConfigError that names the field."""

from __future__ import annotations

import pytest

from meshnat import (
    ClassifierConfig,
    ConfigError,
    ConnectConfig,
    DiscoveryConfig,
    NodeConfig,
    ProbeHelperConfig,
    PunchConfig,
    ReflectionConfig,
    RelayServiceConfig,
)


@pytest.mark.parametrize(("config", "field", "value"), [
    (NodeConfig, "udp_port", 70000),
    (NodeConfig, "dial_timeout", float("inf")),
    (ReflectionConfig, "rate", 0),
    (ReflectionConfig, "burst", 0),
    (DiscoveryConfig, "min_responses", 0),
    (DiscoveryConfig, "timeout", -1.0),
    (ClassifierConfig, "probe_wait", float("nan")),
    (ProbeHelperConfig, "probe_copies", 5),
    (ProbeHelperConfig, "alt_port", -1),
    (PunchConfig, "birthday_sockets", 0),
    (PunchConfig, "stream_timeout", 0.0),
    (RelayServiceConfig, "max_circuits", 0),
    (RelayServiceConfig, "circuit_duration", "2m"),
    (ConnectConfig, "relay_timeout", 0),
    (ConnectConfig, "suspect_circuit_interval", 0.0),
    (ConnectConfig, "max_paced_peers", 0),
])
def test_a_bad_value_is_refused_with_the_field_named(config: type, field: str,
                                                     value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        config(**{field: value})


def test_defaults_are_valid_and_discovery_needs_room_for_its_quorum() -> None:
    for config in (NodeConfig, ReflectionConfig, DiscoveryConfig, ClassifierConfig,
                   ProbeHelperConfig, PunchConfig, RelayServiceConfig, ConnectConfig):
        config()
    with pytest.raises(ConfigError, match="max_reflectors"):
        DiscoveryConfig(min_responses=5, max_reflectors=3)
