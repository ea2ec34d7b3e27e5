from collections import Counter

import pytest
from scipy.stats import chisquare

from raysplit.core.events import AssignmentKind
from serve_app.config.errors import RoutingError
from serve_app.config.ingress import IngressConfig
from serve_app.predict.routing import Router, bucket


def router(weights: tuple[float, ...], **extra) -> Router:
    variants = [
        {"name": f"v{i}", "model_uri": f"models:/m/{i + 1}", "weight": w}
        for i, w in enumerate(weights)
    ]
    variants.append({"name": "shadow", "model_uri": "models:/m/9", "shadow": True})
    return Router(IngressConfig.model_validate({"variants": variants, **extra}))


def test_bucket_is_stable_and_salted() -> None:
    assert bucket("alice", "s1") == bucket("alice", "s1")
    assert 0 <= bucket("alice", "s1") < 10_000
    moved = sum(bucket(f"user{i}", "s1") != bucket(f"user{i}", "s2") for i in range(100))
    assert moved > 90


def test_random_assignment_follows_weights() -> None:
    r = router((70, 30))
    draws = [i / 10_000 for i in range(10_000)]
    counts = Counter(r.assign(None, None, d).variant for d in draws)
    assert counts == {"v0": 7000, "v1": 3000}
    assert {r.assign(None, None, d).kind for d in draws[:3]} == {AssignmentKind.SPLIT}


def test_sticky_users_split_by_weight_and_never_to_shadows() -> None:
    r = router((50, 30, 20))
    counts = Counter(r.assign(f"user-{i}", None, 0.0).variant for i in range(20_000))
    assert set(counts) == {"v0", "v1", "v2"}
    assert (
        chisquare([counts["v0"], counts["v1"], counts["v2"]], [10_000, 6_000, 4_000]).pvalue > 0.001
    )


def test_changing_weights_moves_only_the_users_it_must() -> None:
    before, after = router((90, 10)), router((80, 20))
    users = [f"user-{i}" for i in range(20_000)]
    moves = Counter(
        (before.assign(u, None, 0).variant, after.assign(u, None, 0).variant) for u in users
    )
    assert moves[("v1", "v0")] == 0  # nobody leaves the growing variant
    assert 0.08 < moves[("v0", "v1")] / len(users) < 0.12  # about the 10% that must move


def test_zero_weight_variant_gets_no_traffic_but_can_be_forced() -> None:
    r = router((1, 0))
    assert {r.assign(f"u{i}", None, i / 100).variant for i in range(100)} == {"v0"}
    assert r.assign(None, "v1", 0.5).variant == "v1"
    assert r.expected_shares() == {"v0": 1.0, "v1": 0.0}


def test_forcing_rules() -> None:
    r = router((1, 1))
    assert r.assign("alice", "v1", 0.0).kind is AssignmentKind.FORCED
    with pytest.raises(RoutingError, match="X-Variant 'shadow' is not a live variant"):
        r.assign(None, "shadow", 0.0)
    with pytest.raises(RoutingError, match="overrides are disabled"):
        router((1, 1), allow_override=False).assign(None, "v0", 0.0)
