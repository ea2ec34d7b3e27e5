"""Experiment statistics from aggregates that stay valid when traffic moves (issue 15).

Pure functions over :mod:`serve_app.aggregates` (counts, sums and sums of squares per
variant, allocation epoch, assignment kind and time bucket): no rows, no I/O.

Why each piece looks the way it does stands with the piece (strata in :mod:`.stratified`,
always-valid looks in :mod:`.inference`, several candidates in :mod:`.multiple`); one
reason holds for the whole package:

* **Only randomised traffic counts.** ``split`` and ``sticky`` cells enter the
  sample-ratio check, the comparisons, the guardrails and the label coverage test;
  ``forced`` cells never do (they are summarised on their own) and ``shadow`` cells only
  through the paired shadow comparison.

The modules, each importing only those before it:

* :mod:`.models`: the result models, :class:`Metric` and the shared constants;
* :mod:`.sample_ratio`: the sample-ratio check per epoch;
* :mod:`.inference`: intervals, z and always-valid (mSPRT) p-values;
* :mod:`.sample_size`: minimum detectable effects and sample sizes;
* :mod:`.stratified`: challenger against control within strata, combined;
* :mod:`.labels`: label coverage and delay;
* :mod:`.paired`: shadows against the live variant (McNemar, paired t);
* :mod:`.multiple`: Holm's correction;
* :mod:`.report`: :func:`experiment_statistics`, verdicts and summaries;
* :mod:`.text`: :func:`render_text`.
"""

from serve_app.experiment_stats.inference import Z, msprt_p_value
from serve_app.experiment_stats.labels import label_coverage
from serve_app.experiment_stats.models import (
    BINARY,
    HIGHER_IS_BETTER,
    LABEL_COVERAGE_ALPHA,
    MIN_EXPECTED_COUNT,
    RANDOMISED,
    SCHEMA_VERSION,
    ChallengerSummary,
    ExperimentStatistics,
    ForcedTraffic,
    LabelCoverage,
    LabelDelay,
    Metric,
    PairedComparison,
    SampleRatio,
    SampleRatioStratum,
    StratifiedComparison,
    StratumEffect,
    VariantCoverage,
)
from serve_app.experiment_stats.multiple import holm
from serve_app.experiment_stats.paired import EXACT_MCNEMAR_BELOW, paired_shadow_comparison
from serve_app.experiment_stats.report import experiment_statistics
from serve_app.experiment_stats.sample_ratio import sample_ratio_by_epoch
from serve_app.experiment_stats.sample_size import (
    DEFAULT_ERROR_RATE_EFFECT,
    DEFAULT_LOG_LATENCY_EFFECT,
)
from serve_app.experiment_stats.stratified import (
    StratifiedLooks,
    stratified_comparison,
    stratified_looks,
)
from serve_app.experiment_stats.text import render_text

__all__ = [
    "BINARY",
    "DEFAULT_ERROR_RATE_EFFECT",
    "DEFAULT_LOG_LATENCY_EFFECT",
    "EXACT_MCNEMAR_BELOW",
    "HIGHER_IS_BETTER",
    "LABEL_COVERAGE_ALPHA",
    "MIN_EXPECTED_COUNT",
    "RANDOMISED",
    "SCHEMA_VERSION",
    "ChallengerSummary",
    "ExperimentStatistics",
    "ForcedTraffic",
    "LabelCoverage",
    "LabelDelay",
    "Metric",
    "PairedComparison",
    "SampleRatio",
    "SampleRatioStratum",
    "StratifiedComparison",
    "StratifiedLooks",
    "StratumEffect",
    "VariantCoverage",
    "Z",
    "experiment_statistics",
    "holm",
    "label_coverage",
    "msprt_p_value",
    "paired_shadow_comparison",
    "render_text",
    "sample_ratio_by_epoch",
    "stratified_comparison",
    "stratified_looks",
]
