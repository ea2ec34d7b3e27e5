"""Serving's timing and size knobs, one line each, in one place (as Ray Serve keeps its own
in ``ray.serve._private.constants``). What a user tunes per deploy is in the ingress
``user_config`` (:mod:`serve_app.config.ingress`); locations come from the environment
through :mod:`raysplit.core.settings`; statistical levels are :mod:`serve_app.stats.settings`.
"""

from __future__ import annotations

# Background loops of a replica
IDLE_POLL_S = 1.0  # how often a loop whose interval is 0 (switched off) looks again
ROLLOUT_POLL_S = 2.0  # how often every replica reads the rollout's record
LEASE_TTLS = 3  # intervals a silent lease holder (report gauges, rollout) keeps its lease
KEYS_WATCH_INTERVAL_S = 1.0  # how soon a changed keys file takes effect on every replica
KEY_USE_FLUSH_S = 5.0  # how often a replica adds its key-use counts to the store
COMMAND_ATTEMPTS = 3  # an operator command races at most a decision or two

# Sizes of what a replica keeps or answers
REFUSED_KEPT = 50  # refused events kept per replica for GET /models and the logs
MAX_FEEDBACK = 10_000  # feedback items in one POST /feedback
MAX_HISTORY = 2000  # rows GET /predictions/history returns at most
MAX_TIMELINE_POINTS = 60  # points of GET /experiment/timeline
DRIFT_WINDOW = 1000  # recent inputs per variant compared with the training split
MAX_CLASS_LABELS = 50  # beyond this, predicted classes are counted as "other" in metrics
MAX_REASON = 500  # characters of a rollout decision's reason: one line for a person

# Waits
DEPLOY_STATUS_TIMEOUT_S = 5.0  # GET /models' wait for Serve's own status
