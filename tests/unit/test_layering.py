"""Imports run one way: the CLI over serving and training, both over the foundation
(raysplit.core), and serving never over training. Read from the source, so a new import
that breaks the rule fails here rather than in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# package -> what its modules may not import; none of them may import raysplit outside
# its foundation (raysplit.core): that is the CLI on top
FORBIDDEN = {"serve_app": ("tune",), "tune": ("serve_app",), "raysplit/core": ("serve_app", "tune")}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offences(package: str, root: Path = REPO) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for name in imported(path):
            top = name.split(".")[0]
            cli = top == "raysplit" and not (name + ".").startswith("raysplit.core.")
            if cli or top in FORBIDDEN[package]:
                found.append(f"{path.relative_to(root)} imports {name}")
    return sorted(found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    assert offences(package) == []


def test_the_rule_sees_an_offending_import(tmp_path: Path) -> None:
    """The check itself can fail: a serving module that imports training is caught."""
    (tmp_path / "serve_app").mkdir()
    (tmp_path / "serve_app" / "bad.py").write_text(
        "from tune.search import run_search\nfrom raysplit.cli import main\n"
    )
    assert offences("serve_app", tmp_path) == [
        "serve_app/bad.py imports raysplit.cli",
        "serve_app/bad.py imports raysplit.cli.main",
        "serve_app/bad.py imports tune.search",
        "serve_app/bad.py imports tune.search.run_search",
    ]
