"""The command's output piped into a reader that stopped early (`raysplit ... | head`) ends
quietly, with status 0 and no BrokenPipeError traceback (issue 38)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from raysplit.cli.main import main


def test_a_closed_pipe_ends_the_command_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYSPLIT_HOME", str(tmp_path))
    read, write = os.pipe()
    os.close(read)  # the reader is gone: every write to the pipe fails with EPIPE
    closed = io.TextIOWrapper(os.fdopen(write, "wb"), write_through=False)
    monkeypatch.setattr(sys, "stdout", closed)
    assert main(["info"]) == 0
    closed.write("more")  # the pipe's descriptor now leads to /dev/null: nothing fails
    closed.flush()
