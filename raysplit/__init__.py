"""raysplit: ship scikit-learn models on Ray and find out, with evidence, which version wins."""

from raysplit.core import __version__

__all__ = ["__version__"]
