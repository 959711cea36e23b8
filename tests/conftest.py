"""Suite-wide configuration: Hypothesis profiles and the NAT lab fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.netlab import Lab, lab_available, remove_stale_namespaces

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh NAT lab, torn down after the test whatever happens.

    Without root the test is skipped with the reason, except in CI, where a lab that cannot
    be built is a failure: the lab tests must run there. Options for `Lab` come indirectly:
    `@pytest.mark.parametrize("lab", [{"spread_networks": True}], indirect=True)`.
    """
    options: dict[str, object] = getattr(request, "param", {})
    reason = lab_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the NAT lab: {reason}")
        pytest.skip(reason)
    remove_stale_namespaces()
    with Lab(**options) as built:  # type: ignore[arg-type]
        yield built
