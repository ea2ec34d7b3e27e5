"""Every level, default effect and threshold the statistics use, in one place.

Each is a decision with a reason beside it; the functions in this package take them from
here, so a change of level is one line and the docs can cite one module.
"""

from __future__ import annotations

import math

from scipy import stats

# Significance and power
ALPHA = 0.05  # two-sided level of every comparison a report shows
POWER = 0.8  # the power a "no detectable difference" verdict waits for
Z = float(stats.norm.ppf(1 - ALPHA / 2))  # the two-sided normal quantile at ALPHA (1.96)
SRM_ALPHA = 0.001  # sample-ratio mismatch: an alarm re-checked at every refresh, so strict
SRM_PRIOR_COUNT = 1000.0  # the sequential SRM's Dirichlet prior weight, in draws
SRM_STRATA_SHARE = 0.9  # of SRM_ALPHA for the worst stratum (Holm); the rest for all combined
LABEL_COVERAGE_ALPHA = SRM_ALPHA  # unequal labelling across arms: a validity alarm, as SRM

# Minimum detectable effects, when the config gives none
DEFAULT_ACCURACY_EFFECT = 0.05  # five accuracy points
DEFAULT_RELATIVE_ERROR_EFFECT = 0.10  # a tenth of the control's mean absolute error
DEFAULT_ERROR_RATE_EFFECT = 0.01  # one point of error rate
DEFAULT_LOG_LATENCY_EFFECT = math.log(1.1)  # 10% slower (geometric mean)

# Where approximations stop holding
MIN_SEQUENTIAL_SAMPLES = 100  # per arm before the sequential test looks (normal approximation)
MIN_EXPECTED_COUNT = 5.0  # chi-square approximation: strata below this are not tested
MIN_EXPECTED_EVENTS = 10.0  # errors each arm expects before the error-rate guardrail looks
EXACT_MCNEMAR_BELOW = 25  # discordant pairs under which McNemar is the exact binomial

# Input drift (population stability index against the training split)
PSI_MODERATE = 0.1  # "moderate" shift, shown
PSI_DRIFT = 0.25  # "drift", a rollout guardrail's default
MIN_DRIFT_ROWS = 50  # recent inputs per variant before PSI is computed

# A rollout's always-valid tests share ALPHA (Bonferroni; serve_app.rollout.rule says why)
ALPHA_PROMOTE = ALPHA  # non-inferiority: the only way to promote
ALPHA_WORSE = 0.02  # the rollback budget: quality, error rate, latency, SRM (<= 10 looks)
ALPHA_ERROR_RATE = 0.01
ALPHA_LATENCY = 0.01
