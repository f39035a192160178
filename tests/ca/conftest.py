"""CA fixtures: a CA in the test database."""

from __future__ import annotations

import pytest

from tessera.container import Services


@pytest.fixture
def ca_services(services: Services) -> Services:
    with services.sessions() as s:
        services.ca.ensure(s)
        s.commit()
    return services
