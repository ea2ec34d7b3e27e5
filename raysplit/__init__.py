"""raysplit: ship scikit-learn models on Ray and find out, with evidence, which version wins."""

__version__ = "0.1.0"
