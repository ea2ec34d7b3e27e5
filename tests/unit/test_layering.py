"""Imports run one way, folders included, read from the source so a new import that breaks
the rule fails here rather than in review.

The packages, bottom first: the foundation (``raysplit.core``), the event store that owns
the database (``raysplit.eventstore``), then serving and training side by side (neither
imports the other), and the command line on top (``raysplit.cli``). Inside serving, each
sub-package may import only those below it; ``app.py``, the Ray edge, sits on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# bottom first; a module may import its own layer and those below, never one above
LAYERS = (
    "raysplit.core",
    "raysplit.eventstore",
    "tune",
    "serve_app.config",
    "serve_app.stats",
    "serve_app.report",
    "serve_app.rollout",
    "serve_app.events",
    "serve_app.predict",
    "serve_app.metrics",
    "serve_app.replica",
    "serve_app.http",
    "serve_app.app",
    "raysplit.cli",
)
# training and serving sit side by side, over the event store and under the command line:
# neither imports the other
TRAINING = "tune"
APART = (TRAINING, "serve_app")
MAX_MODULES_PER_FOLDER = 15


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def layer_of(module: str) -> int | None:
    """The index of the layer ``module`` belongs to; None for third-party modules."""
    for index, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return index
    if module.split(".")[0] in ("raysplit", *APART):
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS")
    return None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def offences(root: Path = REPO) -> list[str]:
    found = []
    for top in ("raysplit", "serve_app", TRAINING):
        for path in sorted((root / top).rglob("*.py")):
            name = module_name(path, root)
            if name in ("raysplit", "serve_app", TRAINING):
                continue  # a top package's __init__ only holds its version
            mine = layer_of(name)
            for target in sorted(imported(path)):
                theirs = layer_of(target)
                if theirs is None:
                    continue
                sides = {name.split(".")[0], target.split(".")[0]}
                if theirs > mine or sides == set(APART):
                    found.append(f"{path.relative_to(root)} imports {target}")
    return found


def crowded(root: Path = REPO) -> list[str]:
    return [
        f"{folder.relative_to(root)}: {n} modules"
        for top in ("raysplit", "serve_app", TRAINING)
        for folder in [root / top, *(p for p in (root / top).rglob("*") if p.is_dir())]
        if (n := sum(1 for f in folder.glob("*.py") if f.name != "__init__.py"))
        > MAX_MODULES_PER_FOLDER
    ]


def test_imports_run_one_way() -> None:
    assert offences() == []


def test_no_folder_is_a_junk_drawer() -> None:
    assert crowded() == []


@pytest.mark.parametrize(
    ("module", "line", "offence"),
    [
        (
            "serve_app/stats/bad.py",
            "from serve_app.report.experiment import build_report\n",
            "serve_app/stats/bad.py imports serve_app.report.experiment",
        ),
        (
            "serve_app/predict/bad.py",
            "from serve_app.http.guard import Guard\n",
            "serve_app/predict/bad.py imports serve_app.http.guard",
        ),
        (
            "serve_app/http/bad.py",
            "import tune.search\n",
            "serve_app/http/bad.py imports tune.search",
        ),
        (
            "tune/bad.py",
            "from serve_app.stats.common import ALPHA\n",
            "tune/bad.py imports serve_app.stats.common",
        ),
        (
            "raysplit/eventstore/bad.py",
            "from raysplit.cli.main import main\n",
            "raysplit/eventstore/bad.py imports raysplit.cli.main",
        ),
        (
            "raysplit/core/bad.py",
            "from raysplit.eventstore.store import EventStore\n",
            "raysplit/core/bad.py imports raysplit.eventstore.store",
        ),
    ],
)
def test_the_rule_sees_a_wrong_way_import(
    tmp_path: Path, module: str, line: str, offence: str
) -> None:
    """The check itself can fail: one import planted the wrong way in a copy is named."""
    for top in ("raysplit", "serve_app", TRAINING):
        for path in (REPO / top).rglob("*.py"):
            copy = tmp_path / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    (tmp_path / module).write_text(line)
    assert offences(tmp_path) == [offence]


def test_a_crowded_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "serve_app" / "report").mkdir(parents=True)
    for i in range(MAX_MODULES_PER_FOLDER + 1):
        (tmp_path / "serve_app" / "report" / f"m{i}.py").write_text("")
    assert crowded(tmp_path) == [f"serve_app/report: {MAX_MODULES_PER_FOLDER + 1} modules"]
