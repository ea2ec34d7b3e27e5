"""`raysplit keys new`: the printed entry authorizes the printed key, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from serve_app.http.auth import ApiKeys, Scope

RAYSPLIT = str(Path(sys.executable).parent / "raysplit")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAYSPLIT, "keys", "new", *args], capture_output=True, text=True, timeout=60
    )


def test_json_entry_authorizes_the_printed_key() -> None:
    result = run("--scope", "admin", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"key", "entry"}
    assert printed["key"].startswith("rsk_")
    assert printed["entry"].startswith("admin:sha256:")
    assert printed["key"] not in printed["entry"]

    keys = ApiKeys.from_environment({"RAYSPLIT_API_KEYS": printed["entry"]})
    decision = keys.authorize(printed["key"], Scope.ADMIN)
    assert decision.status == 200 and decision.scope is Scope.ADMIN
    assert keys.authorize(printed["key"] + "x", Scope.PREDICT).status == 401


def test_text_output_labels_key_and_entry_for_a_predict_key() -> None:
    result = run("--scope", "predict")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    key_line = next(i for i, line in enumerate(lines) if line.startswith("API key"))
    entry_line = next(i for i, line in enumerate(lines) if "RAYSPLIT_API_KEYS" in line)
    key, entry = lines[key_line + 1].strip(), lines[entry_line + 1].strip()
    assert "shown only this once" in lines[key_line]
    assert "RAYSPLIT_API_KEYS_FILE" in lines[entry_line]

    keys = ApiKeys.from_environment({"RAYSPLIT_API_KEYS": entry})
    assert keys.authorize(key, Scope.PREDICT).status == 200
    assert keys.authorize(key, Scope.ADMIN).status == 403


def test_scope_is_required() -> None:
    result = run()
    assert result.returncode == 2
    assert "--scope" in result.stderr
    assert result.stdout == ""


def test_a_named_expiring_key_is_called_by_its_name_until_it_expires() -> None:
    result = run("--scope", "admin", "--name", "ops-laptop", "--expires", "2027-01-31", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["entry"].endswith(";name=ops-laptop;expires=2027-01-31")
    keys = ApiKeys.from_environment({"RAYSPLIT_API_KEYS": printed["entry"]})
    before = datetime(2027, 1, 30, tzinfo=UTC)
    assert keys.authorize(printed["key"], Scope.ADMIN, now=before).key == "ops-laptop"
    after = datetime(2027, 1, 31, 0, 0, 1, tzinfo=UTC)
    assert keys.authorize(printed["key"], Scope.ADMIN, now=after).status == 401


def test_a_bad_name_or_expiry_exits_2_naming_it() -> None:
    for flag, value, words in (
        ("--name", "has space", "name must be"),
        ("--expires", "soon", "ISO 8601"),
    ):
        result = run("--scope", "predict", flag, value)
        assert result.returncode == 2, result.stdout
        assert words in result.stderr and "rsk_" not in result.stdout + result.stderr
