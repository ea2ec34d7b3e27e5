"""What a replica serves at one moment: config, router and loaded models, swapped whole.

A new state is built completely (config validated, every model loaded and checked) before
it replaces the old one in a single assignment, so a request sees either the old or the
new experiment, never a mix, and a failed build leaves the old one serving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

from raysplit.core.events import AllocationEvent
from serve_app.config import IngressConfig
from serve_app.models import LoadedModel
from serve_app.routing import Router


class IncompatibleVariants(ValueError):
    """Variants that could not answer the same request."""


@dataclass(frozen=True)
class ServingState:
    config: IngressConfig
    router: Router
    models: dict[str, LoadedModel]
    features: list[str]

    @classmethod
    def build(cls, config: IngressConfig, models: dict[str, LoadedModel]) -> ServingState:
        control = models[config.control_variant]
        for name, model in models.items():
            if model.features != control.features:
                raise IncompatibleVariants(
                    f"variant '{name}' expects features {model.features}, but the control"
                    f" '{config.control_variant}' expects {control.features}"
                )
            if (model.classes is None) != (control.classes is None):
                raise IncompatibleVariants(
                    f"variant '{name}' and the control '{config.control_variant}' are not"
                    " the same kind of model (classifier vs regressor)"
                )
        return cls(config, Router(config), models, control.features)

    @cached_property
    def allocation(self) -> AllocationEvent:
        """The allocation this state serves, as the event that records it."""
        return AllocationEvent(
            experiment=self.config.experiment,
            key=self.router.allocation_key(),
            shares=self.router.expected_shares(),
            created_at=time.time(),
        )

    @cached_property
    def model_names(self) -> frozenset[str]:
        """Names under which OIP clients may address the routed experiment (computed once
        per state, not per request)."""
        return frozenset(
            {self.config.experiment} | {self.models[v.name].resolved.name for v in self.config.live}
        )
