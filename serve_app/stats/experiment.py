"""All of an experiment's statistics at once: the comparisons, Holm, the verdicts after it,
the warnings, and a one-line summary per challenger."""

from __future__ import annotations

from collections.abc import Sequence

from raysplit.eventstore.aggregates import AssignmentKind, Cell, ExperimentAggregates
from serve_app.stats.common import Verdict
from serve_app.stats.labels import label_coverage
from serve_app.stats.models import (
    RANDOMISED,
    ChallengerSummary,
    ExperimentStatistics,
    ForcedTraffic,
    LabelCoverage,
    Metric,
    PairedComparison,
    SampleRatio,
    StratifiedComparison,
)
from serve_app.stats.multiple import _adjust
from serve_app.stats.paired import _decide_paired, paired_shadow_comparison
from serve_app.stats.sample_ratio import sample_ratio_by_epoch
from serve_app.stats.settings import DEFAULT_RELATIVE_ERROR_EFFECT, MIN_SEQUENTIAL_SAMPLES
from serve_app.stats.stratified import _decide, stratified_comparison


def _live_variants(aggregates: ExperimentAggregates) -> list[str]:
    names: list[str] = []
    for e in sorted(aggregates.epochs, key=lambda e: e.epoch):
        names += [n for n, s in e.shares.items() if s > 0 and n not in names]
    names += sorted(
        {c.variant for c in aggregates.cells if c.assignment in RANDOMISED} - set(names)
    )
    return names


def _quality_words(verdict: Verdict, metric: Metric) -> str:
    return {
        Verdict.BETTER: "more accurate",
        Verdict.WORSE: "less accurate",
        Verdict.NO_DIFFERENCE: "as accurate",
        Verdict.NOT_ENOUGH_DATA: f"not enough data on {metric.value}",
        Verdict.SRM: "untrustworthy (SRM)",
    }[verdict]


def _summary(
    quality: StratifiedComparison, errors: StratifiedComparison, latency: StratifiedComparison
) -> ChallengerSummary:
    """One line a person can act on, e.g. "as accurate but slower (1.93x latency)"."""
    clauses = []
    if latency.verdict in (Verdict.BETTER, Verdict.WORSE) and latency.ratio is not None:
        word = "faster" if latency.verdict is Verdict.BETTER else "slower"
        clauses.append((latency.verdict, f"{word} ({latency.ratio.estimate:.2f}x latency)"))
    if errors.verdict in (Verdict.BETTER, Verdict.WORSE) and errors.difference is not None:
        word = "fewer errors" if errors.verdict is Verdict.BETTER else "more errors"
        clauses.append((errors.verdict, f"{word} ({100 * errors.difference.estimate:+.2f} pts)"))
    text = _quality_words(quality.verdict, quality.metric)
    for verdict, clause in clauses:
        contrast = (verdict is Verdict.WORSE) != (quality.verdict is Verdict.WORSE)
        text += (
            " but " if contrast and quality.verdict is not Verdict.NOT_ENOUGH_DATA else " and "
        ) + clause
    return ChallengerSummary(
        challenger=quality.challenger,
        quality=quality.verdict,
        error_rate=errors.verdict,
        latency=latency.verdict,
        summary=text,
    )


def _challenger_comparisons(
    aggregates: ExperimentAggregates,
    control: str | None,
    challengers: Sequence[str],
    quality_metric: Metric,
    min_samples: int,
    min_detectable_effect: float | None,
) -> tuple[list[StratifiedComparison], list[StratifiedComparison], list[StratifiedComparison]]:
    """Quality, error-rate and latency comparisons of every challenger against the control,
    kept as three lists because each is its own Holm family; none without a control."""
    comparisons: list[StratifiedComparison] = []
    errors: list[StratifiedComparison] = []
    latency: list[StratifiedComparison] = []
    cells, moments = aggregates.cells, aggregates.unit_moments
    if control is not None:
        for name in challengers:
            comparisons.append(
                stratified_comparison(
                    cells,
                    control,
                    name,
                    quality_metric,
                    min_samples,
                    min_detectable_effect,
                    moments,
                )
            )
            for metric, found in ((Metric.ERROR_RATE, errors), (Metric.LOG_LATENCY, latency)):
                found.append(
                    stratified_comparison(
                        cells, control, name, metric, min_samples, unit_moments=moments
                    )
                )
    return comparisons, errors, latency


def _shadow_effect(
    aggregates: ExperimentAggregates, min_detectable_effect: float | None
) -> float | None:
    """The effect shadows are tested for: the one given, else for regressors a tenth of the
    live MAE (paired cells carry differences only, not the error level itself)."""
    if min_detectable_effect is not None or aggregates.classification:
        return min_detectable_effect
    scored = [c for c in aggregates.cells if c.assignment in RANDOMISED and c.labelled]
    labelled = sum(c.labelled for c in scored)
    mae = sum(c.abs_error_sum for c in scored) / labelled if labelled else 0.0
    return DEFAULT_RELATIVE_ERROR_EFFECT * mae or None


def _shadow_comparisons(
    aggregates: ExperimentAggregates, min_samples: int, min_detectable_effect: float | None
) -> list[PairedComparison]:
    """A paired comparison per shadow (in name order) that has paired cells; shadows seen
    only in unpaired cells have nothing to compare on the same requests."""
    shadow_names = sorted(
        {p.shadow for p in aggregates.paired}
        | {c.variant for c in aggregates.cells if c.assignment is AssignmentKind.SHADOW}
    )
    effect = _shadow_effect(aggregates, min_detectable_effect)
    return [
        paired_shadow_comparison(
            aggregates.paired, name, aggregates.classification, min_samples, effect
        )
        for name in shadow_names
        if any(p.shadow == name for p in aggregates.paired)
    ]


def _adjust_and_decide(
    comparisons: list[StratifiedComparison],
    errors: list[StratifiedComparison],
    latency: list[StratifiedComparison],
    shadows: list[PairedComparison],
    srm: bool,
    min_samples: int,
) -> None:
    """Holm within each family (quality with the shadows, errors, latency), then every
    verdict re-decided on the adjusted p-values and the SRM flag."""
    _adjust([*comparisons, *shadows])
    _adjust(errors)
    _adjust(latency)
    for c in (*comparisons, *errors, *latency):
        c.verdict = _decide(c, srm, min_samples)
    for s in shadows:
        s.verdict = _decide_paired(s, min_samples)


def _forced_traffic(cells: Sequence[Cell]) -> list[ForcedTraffic]:
    """Forced requests per variant, by name: counted apart because they were not randomised
    and so are never part of a comparison."""
    forced: dict[str, ForcedTraffic] = {}
    for c in cells:
        if c.assignment is AssignmentKind.FORCED:
            f = forced.setdefault(
                c.variant,
                ForcedTraffic(variant=c.variant, requests=0, errors=0, labelled=0, correct=0),
            )
            f.requests += c.requests
            f.errors += c.errors
            f.labelled += c.labelled
            f.correct += c.correct
    return sorted(forced.values(), key=lambda f: f.variant)


def _warnings(srm: SampleRatio, labels: LabelCoverage) -> list[str]:
    """What makes the comparisons untrustworthy, first the SRM and its notes, then biased
    label coverage, so the report leads with them."""
    warnings = []
    if srm.flagged:
        warnings.append(
            "sample ratio mismatch (always-valid"
            f" p = {srm.always_valid_p_value:.2g}): the router or the logging is off;"
            " do not trust the comparisons"
        )
    warnings += srm.notes
    if labels.flagged:
        warnings.append(
            f"label coverage differs between variants (p = {labels.p_value:.2g}):"
            " accuracy may be biased by which requests got labels"
        )
    return warnings


def experiment_statistics(
    aggregates: ExperimentAggregates,
    control: str | None = None,
    min_detectable_effect: float | None = None,
    min_samples: int = MIN_SEQUENTIAL_SAMPLES,
) -> ExperimentStatistics:
    """All of issue 15's statistics for one experiment, ready to embed in the report.

    ``control`` defaults to the aggregates' control, then to the first live variant of the
    earliest epoch. ``min_detectable_effect`` applies to the quality metric (accuracy points
    or MAE units); guardrails use their own defaults.
    """
    cells = aggregates.cells
    live = _live_variants(aggregates)
    control = control or aggregates.control or (live[0] if live else None)
    srm = sample_ratio_by_epoch(
        cells, aggregates.epochs, aggregates.units, aggregates.units_in_two_arms
    )
    quality_metric = Metric.ACCURACY if aggregates.classification else Metric.MAE
    challengers = [n for n in live if n != control]
    comparisons, errors, latency = _challenger_comparisons(
        aggregates, control, challengers, quality_metric, min_samples, min_detectable_effect
    )
    shadows = _shadow_comparisons(aggregates, min_samples, min_detectable_effect)
    _adjust_and_decide(comparisons, errors, latency, shadows, srm.flagged, min_samples)
    labels = label_coverage(cells, aggregates.label_delay_s, live)
    return ExperimentStatistics(
        experiment=aggregates.experiment,
        task="classification" if aggregates.classification else "regression",
        control=control,
        sample_ratio=srm,
        comparisons=comparisons,
        guardrails=[*errors, *latency],
        shadows=shadows,
        labels=labels,
        forced=_forced_traffic(cells),
        summaries=[_summary(q, e, t) for q, e, t in zip(comparisons, errors, latency, strict=True)],
        warnings=_warnings(srm, labels),
    )
