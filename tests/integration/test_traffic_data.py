"""`raysplit traffic --data FILE` against the running iris application, through the
installed console script: the user's own rows and labels are sent with feedback, and a
file whose labels are of another vocabulary is refused before anything is sent."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.integration.serving import Deployer, user_config
from tests.integration.test_cli import RAYSPLIT
from tests.models import iris

pytestmark = pytest.mark.integration


def traffic(url: str, path: Path, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAYSPLIT), "traffic", "--url", url, "--data", str(path), "--target", "species", *more],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_traffic_from_a_users_file_and_a_refused_vocabulary(
    deployer: Deployer, tmp_path: Path
) -> None:
    # an experiment of its own: the feedback sent here counts in no other test's report
    deployer.ensure(user_config(experiment=f"iris-data-{uuid.uuid4().hex[:6]}"))
    x, y = iris()  # served feature names, species as labels
    rows = x.assign(species=y).sample(30, random_state=0)
    good = tmp_path / "iris.csv"
    rows.to_csv(good, index=False)

    sent = traffic(deployer.url, good, "--requests", "12", "--users", "3", "--feedback")
    assert sent.returncode == 0, sent.stderr
    assert f"sent 12 predictions to {deployer.url}/predict: 12 ok, 0 failed" in sent.stdout
    assert "feedback: 12 labels sent" in sent.stdout

    wrong = tmp_path / "numbered.csv"
    rows.assign(species=["class_0", "class_1"] * 15).to_csv(wrong, index=False)
    refused = traffic(deployer.url, wrong, "--requests", "12", "--feedback")
    assert refused.returncode == 2
    assert refused.stdout == ""  # refused before a single prediction
    assert refused.stderr.splitlines() == [
        "raysplit: error: --data numbered.csv: label(s) 'class_0', 'class_1' in column"
        " 'species' are not the served model's classes: setosa, versicolor, virginica"
        " (compared as text)"
    ]
    # the same file without --feedback sends its rows: labels are not used then
    unlabelled = traffic(deployer.url, wrong, "--requests", "4", "--users", "0")
    assert unlabelled.returncode == 0, unlabelled.stderr
    assert "4 ok, 0 failed" in unlabelled.stdout
