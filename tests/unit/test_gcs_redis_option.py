"""`raysplit up --gcs-redis URL`: the URLs Ray's GCS can use become its settings, and every
other one is refused with the reason, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysplit.cli.cluster import gcs_namespace, parse_gcs_redis
from raysplit.cli.main import main
from raysplit.core.errors import RaysplitError


def test_a_plain_url_with_a_port() -> None:
    redis = parse_gcs_redis("redis://127.0.0.1:6390", "ns")
    assert (redis.host, redis.port, redis.tls, redis.username, redis.password) == (
        "127.0.0.1",
        6390,
        False,
        "",
        "",
    )
    assert redis.address == "127.0.0.1:6390"  # RAY_REDIS_ADDRESS
    assert redis.namespace == "ns"


def test_defaults_tls_credentials_and_database_zero() -> None:
    assert parse_gcs_redis("redis://redis.internal", "ns").port == 6379
    assert parse_gcs_redis("redis://h:1/0", "ns").port == 1  # database 0 is what Ray uses
    tls = parse_gcs_redis("rediss://h:6380/", "ns")
    assert tls.tls and tls.address == "rediss://h:6380"
    secret = parse_gcs_redis("redis://default:p%40ss%3Aword@h:6379", "ns")
    assert (secret.username, secret.password) == ("default", "p@ss:word")
    assert "p@ss" not in secret.shown() and secret.shown() == "redis://default:***@h:6379"
    assert parse_gcs_redis("redis://ops@h", "ns").shown() == "redis://ops@h:6379"
    assert parse_gcs_redis("redis://[::1]:6379", "ns").address == "[::1]:6379"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("127.0.0.1:6379", "expected redis://HOST:PORT"),
        ("http://127.0.0.1:6379", "expected redis://HOST:PORT"),
        ("redis://127.0.0.1:6379/13", "cannot select '13'"),
        ("redis://127.0.0.1:6379?ssl=true", "no options"),
        ("redis://127.0.0.1:99999", "out of range"),
        ("redis://127.0.0.1:0", "port 0"),
        ("redis://:6379", "no host"),
    ],
)
def test_what_the_gcs_cannot_use_is_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(RaysplitError, match=reason) as raised:
        parse_gcs_redis(url, "ns")
    assert repr(url) in str(raised.value)  # the message names the option's value


def test_one_namespace_per_data_directory() -> None:
    assert gcs_namespace(Path("/a/home")) == gcs_namespace(Path("/a/home"))
    assert gcs_namespace(Path("/a/home")) != gcs_namespace(Path("/b/home"))
    assert gcs_namespace(Path("/a/home")).replace("_", "").isalnum()  # no '@' (Ray's separator)


def test_the_command_refuses_a_bad_url_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAYSPLIT_HOME", str(tmp_path / "home"))
    assert main(["up", "--gcs-redis", "redis://127.0.0.1:6379/2"]) == 2
    assert "Ray's GCS always uses Redis database 0" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()  # no cluster.json, no Ray


def test_the_option_is_in_the_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    assert "--gcs-redis URL" in capsys.readouterr().out
