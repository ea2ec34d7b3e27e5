"""What a serving bench run compares: the systems' names as the report prints them, and one
scenario (a system under one load, with its measured runs).

Its own module so that bench/serving.py (which runs the scenarios) and bench/report_bench.py
(which renders them) both import it and neither imports the other.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from load import BATCH_ROWS, Run

FASTAPI, TUNED, ONNX, NOOP, RAYSPLIT, TEXTBOOK, DEFAULT_PROXY = (
    "FastAPI, seed-style",
    "FastAPI, tuned",
    "FastAPI + ONNX",
    "no-op Serve (ceiling)",
    "raysplit",
    "textbook Serve",
    "raysplit, default proxy",
)

OIP_JSON = f"{BATCH_ROWS}-row batch, OIP JSON"
OIP_BINARY = f"{BATCH_ROWS}-row batch, OIP binary"

# the step load's autoscaling (bench/serving.py deploys it; the report prints it)
STEP_AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 8,
    "upscale_delay_s": 5,
    "downscale_delay_s": 20,
}


@dataclass
class Scenario:
    system: str
    name: str
    script: str
    connections: int
    path: str = "/predict"
    rows: int = 1
    user_config: dict = field(default_factory=dict)  # raysplit only: deployed before the run
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.runs)

    def spread(self, attribute: str) -> str:
        values = [getattr(r, attribute) for r in self.runs]
        return f"{min(values):.0f}-{max(values):.0f}"
