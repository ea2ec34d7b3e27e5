"""What a replica serves at one moment: config, router and loaded models, swapped whole.

A new state is built completely (config validated, every model loaded and checked) before
it replaces the old one in a single assignment, so a request sees either the old or the
new experiment, never a mix, and a failed build leaves the old one serving.

While a rollout of the deployed config runs, the state serves the rollout's weights
(:func:`serve_app.rollout.state.effective_config`) and keeps the deployed config beside
them: ``GET /models`` shows both, and a reconfigure or an alias move keeps the rollout's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

from raysplit.core.events import AllocationEvent
from serve_app.config.ingress import IngressConfig
from serve_app.predict.models import LoadedModel
from serve_app.predict.routing import Router
from serve_app.rollout.state import RolloutRecord, applies, effective_config


class IncompatibleVariants(ValueError):
    """Variants that could not answer the same request."""


@dataclass(frozen=True)
class ServingState:
    config: IngressConfig  # what is served: the deployed config with the rollout's weights
    router: Router
    models: dict[str, LoadedModel]
    features: list[str]
    configured: IngressConfig  # as deployed
    rollout: RolloutRecord | None = None  # the rollout whose weights are served, if any

    @classmethod
    def build(
        cls,
        configured: IngressConfig,
        models: dict[str, LoadedModel],
        rollout: RolloutRecord | None = None,
    ) -> ServingState:
        """``rollout``: the experiment's stored rollout; it steers the weights only if it is
        the rollout of ``configured`` (a row left by an earlier block does not)."""
        if rollout is not None and not applies(configured, rollout):
            rollout = None
        config = effective_config(configured, rollout)
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
        return cls(config, Router(config), models, control.features, configured, rollout)

    def rebuilt(
        self, models: dict[str, LoadedModel] | None = None, rollout: RolloutRecord | None = None
    ) -> ServingState:
        """The same deployed config with new models (an alias moved) or a new rollout
        record; whichever is not given is kept."""
        return ServingState.build(
            self.configured, self.models if models is None else models, rollout or self.rollout
        )

    @cached_property
    def allocation(self) -> AllocationEvent:
        """The allocation this state serves, as the event that records it."""
        return AllocationEvent(
            experiment=self.config.experiment,
            key=self.router.allocation_key(self.rollout.allocation_tag if self.rollout else ""),
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
