"""Which variant answers a request: forced, sticky or weighted random.

Pure and deterministic given its inputs, so every replica (and every restart) routes a
sticky user the same way: the user's key is hashed with the salt into one of 10,000
buckets and the buckets are laid out in variant order by weight. Changing weights moves
only the buckets at the boundaries, so only the users that must move do.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from raysplit.core.events import AssignmentKind
from serve_app.config.errors import OverrideDisabled, RoutingError
from serve_app.config.ingress import IngressConfig

BUCKETS = 10_000


@dataclass(frozen=True)
class Assignment:
    variant: str
    kind: AssignmentKind


def bucket(key: str, salt: str) -> int:
    """The sticky bucket of ``key``: stable across processes, machines and restarts."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Router:
    """Routes requests for one ingress config; built once per ``reconfigure()``."""

    def __init__(self, config: IngressConfig):
        self.config = config
        weighted = [v for v in config.live if v.weight > 0]
        self._names = [v.name for v in weighted]
        total = sum(v.weight for v in weighted)
        cumulative = list(accumulate(v.weight / total for v in weighted))
        self._fractions = cumulative[:-1]  # the last boundary is 1.0
        self._bucket_bounds = [round(f * BUCKETS) for f in self._fractions]
        self._live = {v.name for v in config.live}

    def assign(self, sticky_key: str | None, forced: str | None, draw: float) -> Assignment:
        """``draw`` is a uniform number in [0, 1) used only for random assignment."""
        if forced:
            if not self.config.allow_override:
                raise OverrideDisabled("X-Variant overrides are disabled for this experiment")
            if forced not in self._live:
                raise RoutingError(
                    f"X-Variant '{forced}' is not a live variant; live: {sorted(self._live)}"
                )
            return Assignment(forced, AssignmentKind.FORCED)
        if sticky_key:
            index = bisect_right(self._bucket_bounds, bucket(sticky_key, self.config.salt))
            return Assignment(self._names[index], AssignmentKind.STICKY)
        return Assignment(self._names[bisect_right(self._fractions, draw)], AssignmentKind.SPLIT)

    def allocation_key(self, tag: str = "") -> str:
        """Names the allocation: live variants, their weights, the salt and ``tag`` (a
        rollout's run and step, so its epochs are its own). A new key is a new epoch,
        within which assignment does not depend on time."""
        shares = self.expected_shares()
        parts = [self.config.salt, *(f"{n}={shares[n]:.9f}" for n in sorted(shares))]
        text = "\x00".join([*parts, tag] if tag else parts)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def expected_shares(self) -> dict[str, float]:
        """Each live variant's configured share of traffic (zero-weight variants at 0)."""
        total = sum(v.weight for v in self.config.live)
        return {v.name: v.weight / total for v in self.config.live}
