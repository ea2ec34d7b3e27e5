"""Which Python types a model file may hold, for training and serving alike.

Training logs models with skops and lists their types as trusted only when they come from
these modules; serving loads a skops file without ``allow_pickle`` only under the same
rule. One definition, so the two sides cannot disagree about what is safe to load.
"""

TRUSTED_MODULES: tuple[str, ...] = ("sklearn.", "numpy.", "scipy.")


def untrusted(types: list[str]) -> list[str]:
    """The types among ``types`` that are outside :data:`TRUSTED_MODULES`."""
    return [t for t in types if not t.startswith(TRUSTED_MODULES)]
