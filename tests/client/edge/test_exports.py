"""``keel_client.edge`` exports exactly its curated names, each the private module's object."""

from __future__ import annotations

import keel_client.edge as edge
from keel_client.edge import _enforce, _model


def test_the_front_exports_what_it_lists_and_nothing_private() -> None:
    assert len(set(edge.__all__)) == len(edge.__all__)
    for name in edge.__all__:
        assert getattr(edge, name) is not None
        assert not name.startswith("_")
    assert edge.EdgePolicy is _model.EdgePolicy
    assert edge.EdgeEnforcer is _enforce.EdgeEnforcer
    assert {"EdgeClient", "EdgeMiddleware", "EdgePolicy", "RouteTable", "RedisLimiterStore"} <= set(
        edge.__all__
    )
