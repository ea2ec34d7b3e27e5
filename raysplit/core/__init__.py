"""The foundation both sides stand on: errors, locations, reference statistics, the trusted
model types and the prediction event.

Serving (``serve_app``) and training (``tune``) import from here and never from each other
or from the command line on top (:mod:`raysplit.cli`); this package imports nothing of
raysplit's but itself. See docs/architecture.md.
"""

from importlib.metadata import version

# One source of truth: the version pyproject.toml gives the installed package.
__version__ = version("raysplit")
