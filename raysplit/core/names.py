"""Feature names as the HTTP API serves them, shared by training and serving.

`raysplit tune` renames a table's columns to identifiers (``sepal length (cm)`` ->
``sepal_length``) because they become the JSON field names of ``POST /predict``. The
serving side must apply the very same rule when it explains a request that used the
original names, and serving never imports training, so the rule lives here, below both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def clean_identifier(name: str) -> str:
    """Make a feature name usable as a JSON field and Python identifier.

    Units in parentheses are dropped, everything else that is not a letter or digit
    becomes one underscore: ``"sepal length (cm)"`` -> ``"sepal_length"``.
    """
    text = re.sub(r"\([^)]*\)", " ", str(name)).strip().lower()
    text = re.sub(r"[^0-9a-z]+", "_", text).strip("_")
    if not text:
        text = "feature"
    if text[0].isdigit():
        text = f"f_{text}"
    return text


def clean_identifiers(names: Iterable[object]) -> list[str]:
    """Clean every name and keep them unique by numbering repeats (``x``, ``x_2``)."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        base = clean_identifier(str(name))
        count = seen.get(base, 0) + 1
        seen[base] = count
        result.append(base if count == 1 else f"{base}_{count}")
    return result


def served_renames(received: Iterable[str], expected: Iterable[str]) -> dict[str, str]:
    """Each received name that is not served as given but is, once cleaned, an expected
    one: ``{"OD280/OD315 of diluted wines": "od280_od315_of_diluted_wines"}``.

    A client that sends a CSV's own column names gets told which served name each one
    became, instead of a bare "missing" list it has to puzzle out.
    """
    wanted = set(expected)
    renames: dict[str, str] = {}
    for name in received:
        if name in wanted:
            continue
        cleaned = clean_identifier(name)
        if cleaned in wanted:
            renames[name] = cleaned
    return renames
