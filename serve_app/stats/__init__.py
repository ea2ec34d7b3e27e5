"""Experiment statistics from aggregates that stay valid when traffic moves (issue 15).

Pure functions over :mod:`raysplit.eventstore.aggregates` (counts, sums and sums of squares per
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
