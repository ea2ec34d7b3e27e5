"""The ``raysplit`` command (:mod:`.main`) and what only it does: the local cluster
(:mod:`.cluster`), checking a deploy (:mod:`.deploy_check`), sample traffic, report text.

The top of the house: it imports serving, training and the foundation; nothing imports it.
"""
