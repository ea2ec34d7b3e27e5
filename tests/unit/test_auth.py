"""API-key authentication: parsing, decisions, route scopes, header extraction, exposure."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serve_app.http.auth import (
    ApiKeys,
    AuthDecision,
    KeyEntry,
    Scope,
    basic_on_unsafe_method,
    bind_is_loopback,
    entry_for,
    exposure_warning,
    hash_key,
    new_key,
    parse_entry,
    presented_key,
    required_scope,
)

PREDICT_KEY = "rsk_predict-key-for-tests"
ADMIN_KEY = "rsk_admin-key-for-tests"
PREDICT_ENTRY = entry_for(PREDICT_KEY, Scope.PREDICT)
ADMIN_ENTRY = entry_for(ADMIN_KEY, Scope.ADMIN)
# a plaintext key pasted where its entry belongs: must never show up in an error
SECRET = "rsk_ThisIsAPastedSecretThatMustNotLeak0123456789"


@pytest.fixture
def keys() -> ApiKeys:
    return ApiKeys.from_environment({"RAYSPLIT_API_KEYS": f"{PREDICT_ENTRY},{ADMIN_ENTRY}"})


# ---------------------------------------------------------------------------- hashing


def test_hash_key_is_sha256_of_utf8() -> None:
    assert hash_key("clé") == "sha256:" + hashlib.sha256("clé".encode()).hexdigest()


def test_new_keys_are_prefixed_random_and_long() -> None:
    first, second = new_key(), new_key()
    assert first.startswith("rsk_") and second.startswith("rsk_")
    assert first != second
    assert len(first) == len("rsk_") + 43  # 32 bytes, URL-safe base64 without padding


def test_entry_round_trips() -> None:
    parsed = parse_entry(ADMIN_ENTRY, "test")
    assert parsed == KeyEntry(Scope.ADMIN, hashlib.sha256(ADMIN_KEY.encode()).hexdigest())
    assert parsed.entry == ADMIN_ENTRY


# ---------------------------------------------------------------------------- parsing


def test_nothing_configured_is_disabled() -> None:
    assert not ApiKeys.from_environment({}).enabled
    blank = {"RAYSPLIT_API_KEYS": "  ", "RAYSPLIT_API_KEYS_FILE": ""}
    assert not ApiKeys.from_environment(blank).enabled


def test_env_entries_split_on_commas_and_whitespace() -> None:
    third = entry_for("third", Scope.PREDICT)
    env = {"RAYSPLIT_API_KEYS": f" {PREDICT_ENTRY} ,\n{ADMIN_ENTRY}\t{third},, "}
    keys = ApiKeys.from_environment(env)
    assert [e.entry for e in keys.entries] == [PREDICT_ENTRY, ADMIN_ENTRY, third]
    assert keys.enabled


def test_file_entries_skip_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        f"# raysplit API keys\n\n{ADMIN_ENTRY}\n   \n{PREDICT_ENTRY}  # the dashboard\r\n"
    )
    keys = ApiKeys.from_environment({"RAYSPLIT_API_KEYS_FILE": str(path)})
    assert [e.entry for e in keys.entries] == [ADMIN_ENTRY, PREDICT_ENTRY]


def test_env_and_file_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(ADMIN_ENTRY + "\n")
    env = {"RAYSPLIT_API_KEYS": PREDICT_ENTRY, "RAYSPLIT_API_KEYS_FILE": str(path)}
    keys = ApiKeys.from_environment(env)
    assert [e.entry for e in keys.entries] == [PREDICT_ENTRY, ADMIN_ENTRY]
    assert keys.authorize(PREDICT_KEY, Scope.PREDICT).status == 200
    assert keys.authorize(ADMIN_KEY, Scope.ADMIN).status == 200


BAD_ENTRIES = {
    "plaintext key": (SECRET, "not a hashed key entry"),
    "unknown scope": (f"{SECRET}:sha256:{'a' * 64}", "unknown scope"),
    "other hash": (f"admin:md5:{SECRET}", "not a hashed key entry"),
    "short hex": (f"admin:sha256:{'a' * 63}", "has 63 characters"),
    "not hex": (f"admin:sha256:{SECRET[:64].ljust(64, 'z')}", "64 lowercase hex"),
    "upper hex": (f"admin:sha256:{'A' * 64}", "other than 0-9 and a-f"),
    "secret in digest": (f"admin:sha256:{SECRET}", "64 lowercase hex"),
    "extra field": (f"admin:sha256:{'a' * 64}:{SECRET}", "not a hashed key entry"),
}


@pytest.mark.parametrize(("bad", "problem"), BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_env_entry_names_its_position_not_its_value(bad: str, problem: str) -> None:
    env = {"RAYSPLIT_API_KEYS": f"{PREDICT_ENTRY}, {bad}"}
    with pytest.raises(ValueError) as caught:
        ApiKeys.from_environment(env)
    message = str(caught.value)
    assert message.startswith("RAYSPLIT_API_KEYS entry 2: ")
    assert problem in message
    assert bad not in message and SECRET not in message and SECRET[:12] not in message
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(("bad", "problem"), BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_file_line_names_the_file_and_line_not_the_value(
    tmp_path: Path, bad: str, problem: str
) -> None:
    path = tmp_path / "api-keys"
    path.write_text(f"# keys\n{ADMIN_ENTRY}\n{bad}\n")
    with pytest.raises(ValueError) as caught:
        ApiKeys.from_environment({"RAYSPLIT_API_KEYS_FILE": str(path)})
    message = str(caught.value)
    assert message.startswith(f"{path} line 3: ")
    assert problem in message
    assert SECRET not in message and SECRET[:12] not in message


def test_plaintext_key_gets_a_hint_to_hash_it() -> None:
    with pytest.raises(ValueError, match="looks like a plaintext key"):
        ApiKeys.from_environment({"RAYSPLIT_API_KEYS": SECRET})


def test_two_entries_on_one_file_line_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{ADMIN_ENTRY} {PREDICT_ENTRY}\n")
    with pytest.raises(ValueError, match=r"line 1: one entry per line"):
        ApiKeys.from_environment({"RAYSPLIT_API_KEYS_FILE": str(path)})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "keys"
    with pytest.raises(ValueError, match="RAYSPLIT_API_KEYS_FILE") as caught:
        ApiKeys.from_environment({"RAYSPLIT_API_KEYS_FILE": str(path)})
    assert str(path) in str(caught.value)


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read") as caught:
        ApiKeys.from_environment({"RAYSPLIT_API_KEYS_FILE": str(tmp_path)})  # a directory
    assert str(tmp_path) in str(caught.value)


def test_a_named_file_without_entries_does_not_leave_auth_off(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="has no key entries"):
        ApiKeys.from_environment({"RAYSPLIT_API_KEYS_FILE": str(path)})


# ---------------------------------------------------------------------------- decisions


def test_disabled_allows_everything() -> None:
    keys = ApiKeys()
    assert not keys.enabled
    assert keys.authorize(None, Scope.ADMIN) == AuthDecision(200, "ok", None)


def test_open_route_needs_no_key(keys: ApiKeys) -> None:
    decision = keys.authorize(None, None)
    assert decision.status == 200 and decision.allowed


@pytest.mark.parametrize("presented", [None, "", "rsk_not-a-configured-key", PREDICT_ENTRY])
@pytest.mark.parametrize("needed", [Scope.PREDICT, Scope.ADMIN])
def test_missing_or_unknown_key_is_401(keys: ApiKeys, presented: str | None, needed: Scope) -> None:
    decision = keys.authorize(presented, needed)
    assert decision.status == 401 and not decision.allowed
    assert decision.scope is None
    assert "missing or invalid API key" in decision.message
    assert "Authorization: Bearer" in decision.message and "X-API-Key" in decision.message
    assert decision.headers == {"WWW-Authenticate": 'Bearer realm="raysplit"'}


def test_predict_key_on_admin_route_is_403(keys: ApiKeys) -> None:
    decision = keys.authorize(PREDICT_KEY, Scope.ADMIN, route="POST /feedback")
    assert decision.status == 403
    assert decision.scope is Scope.PREDICT
    assert decision.message == "this API key has scope 'predict'; POST /feedback needs 'admin'"
    assert PREDICT_KEY not in decision.message
    assert decision.headers == {}


def test_403_message_without_a_route_is_generic(keys: ApiKeys) -> None:
    message = keys.authorize(PREDICT_KEY, Scope.ADMIN).message
    assert message == "this API key has scope 'predict'; this route needs 'admin'"


def test_predict_key_on_predict_route_is_allowed(keys: ApiKeys) -> None:
    label = hashlib.sha256(PREDICT_KEY.encode()).hexdigest()[:8]
    assert keys.authorize(PREDICT_KEY, Scope.PREDICT) == AuthDecision(
        200, "ok", Scope.PREDICT, label
    )


@pytest.mark.parametrize("needed", [Scope.PREDICT, Scope.ADMIN])
def test_admin_key_is_allowed_everywhere(keys: ApiKeys, needed: Scope) -> None:
    label = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:8]
    assert keys.authorize(ADMIN_KEY, needed) == AuthDecision(200, "ok", Scope.ADMIN, label)


def test_same_key_listed_with_both_scopes_gets_admin() -> None:
    both = entry_for(PREDICT_KEY, Scope.ADMIN)
    keys = ApiKeys.from_entries([PREDICT_ENTRY, both])
    assert keys.match(PREDICT_KEY) is Scope.ADMIN
    keys = ApiKeys.from_entries([both, PREDICT_ENTRY])
    assert keys.match(PREDICT_KEY) is Scope.ADMIN


def test_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch, keys: ApiKeys) -> None:
    """No early exit: a match on the first entry still compares the rest."""
    import serve_app.http.auth as auth

    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented in (PREDICT_KEY, ADMIN_KEY, "rsk_unknown"):
        calls.clear()
        keys.match(presented)
        assert len(calls) == len(keys.entries) == 2


def test_scope_implication() -> None:
    assert Scope.ADMIN.allows(Scope.PREDICT) and Scope.ADMIN.allows(Scope.ADMIN)
    assert Scope.PREDICT.allows(Scope.PREDICT) and not Scope.PREDICT.allows(Scope.ADMIN)


# ---------------------------------------------------------------------------- routes

OPEN = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"]
OPEN += ["/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"]


@pytest.mark.parametrize("path", OPEN)
@pytest.mark.parametrize("method", ["GET", "get", "HEAD"])
def test_open_routes(method: str, path: str) -> None:
    assert required_scope(method, path) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/predict"),
        ("GET", "/v2/models/iris"),
        ("GET", "/v2/models/iris/ready"),
        ("POST", "/v2/models/iris/infer"),
        ("POST", "/v2/models/champion/infer"),
        ("POST", "/v2/models/iris/versions/3/infer"),
    ],
)
def test_predict_routes(method: str, path: str) -> None:
    assert required_scope(method, path) is Scope.PREDICT


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/feedback"),
        ("GET", "/experiment"),
        ("GET", "/predictions/history"),
        ("GET", "/models"),
        ("GET", "/metrics/summary"),
        ("GET", "/predict"),  # only POST /predict is a model call
        ("POST", "/healthz"),  # open routes are open to GET only
        ("GET", "/v2"),
        ("GET", "/v2/models"),
        ("GET", "/admin/secret-new-route"),
        ("GET", "/"),
        ("GET", "/v2/models/../feedback"),
        ("POST", "/v2/models/./../../feedback"),
    ],
)
def test_admin_routes_and_default_deny(method: str, path: str) -> None:
    assert required_scope(method, path) is Scope.ADMIN


def test_trailing_slash_is_classified_like_the_route_it_redirects_to() -> None:
    assert required_scope("POST", "/predict/") is Scope.PREDICT
    assert required_scope("GET", "/healthz/") is None
    assert required_scope("POST", "/feedback/") is Scope.ADMIN


# ---------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer rsk_abc"}, "rsk_abc"),
        ({"authorization": "bearer rsk_abc"}, "rsk_abc"),
        ({"authorization": "BEARER   rsk_abc  "}, "rsk_abc"),
        ({"x-api-key": "rsk_abc"}, "rsk_abc"),
        ({"x-api-key": " rsk_abc "}, "rsk_abc"),
        ({"authorization": "Bearer rsk_first", "x-api-key": "rsk_second"}, "rsk_first"),
        # Basic: the key is the password (a browser on the results page), any user name
        ({"authorization": "Basic dXNlcjpwYXNz", "x-api-key": "rsk_abc"}, "pass"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "pass"),
        ({"authorization": "Basic OnJza19hYmM="}, "rsk_abc"),  # ":rsk_abc", no user name
        ({"authorization": "Basic dXNlcg=="}, None),  # "user": no password
        ({"authorization": "Basic dXNlcjo="}, None),  # "user:": an empty one
        ({"authorization": "Basic not base64!", "x-api-key": "rsk_abc"}, "rsk_abc"),
        ({"authorization": "Bearer ", "x-api-key": "rsk_abc"}, "rsk_abc"),
        ({"authorization": "rsk_abc"}, None),
        ({"x-api-key": ""}, None),
        ({"x-api-key": "   "}, None),
        ({"x-user-id": "u1"}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


def test_headers_to_decision(keys: ApiKeys) -> None:
    key = presented_key({"authorization": f"Bearer {ADMIN_KEY}"})
    assert keys.authorize(key, required_scope("POST", "/feedback")).status == 200
    key = presented_key({"x-api-key": PREDICT_KEY})
    assert keys.authorize(key, required_scope("POST", "/feedback")).status == 403
    assert keys.authorize(key, required_scope("POST", "/v2/models/iris/infer")).status == 200


# ---------------------------------------------------------------------------- exposure


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "localhost", "LocalHost"]
)
def test_loopback_hosts(host: str) -> None:
    assert bind_is_loopback(host)
    assert exposure_warning(host, ApiKeys()) is None


@pytest.mark.parametrize(
    "host", [None, "", "0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "fe80::1", "ray-head.svc"]
)
def test_non_loopback_hosts(host: str | None) -> None:
    assert not bind_is_loopback(host)


@pytest.mark.parametrize("host", [None, "0.0.0.0", "::", "10.0.0.5"])
def test_exposed_without_keys_warns_loudly(host: str | None) -> None:
    warning = exposure_warning(host, ApiKeys())
    assert warning is not None
    assert "\n" not in warning
    assert warning.startswith("WARNING")
    assert "OFF" in warning and "RAYSPLIT_API_KEYS" in warning
    if host:
        assert host in warning


def test_exposed_with_keys_does_not_warn(keys: ApiKeys) -> None:
    assert exposure_warning("0.0.0.0", keys) is None


# ---------------------------------------------------------------------------- ambient


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "post"])
def test_basic_credentials_never_authorise_a_state_change(method: str) -> None:
    """A browser sends cached Basic credentials with another site's form; a bearer key or
    X-API-Key, which such a form cannot set, still works."""
    basic = {"authorization": "Basic " + base64.b64encode(f"u:{ADMIN_KEY}".encode()).decode()}
    assert presented_key(basic, method) is None
    assert basic_on_unsafe_method(basic, method)
    assert presented_key({"authorization": f"Bearer {ADMIN_KEY}"}, method) == ADMIN_KEY
    assert presented_key({"x-api-key": ADMIN_KEY}, method) == ADMIN_KEY
    assert not basic_on_unsafe_method({**basic, "x-api-key": ADMIN_KEY}, method)


@pytest.mark.parametrize("method", ["GET", "HEAD", "get"])
def test_basic_credentials_read_the_page(method: str) -> None:
    basic = {"authorization": "Basic " + base64.b64encode(f"u:{ADMIN_KEY}".encode()).decode()}
    assert presented_key(basic, method) == ADMIN_KEY
    assert not basic_on_unsafe_method(basic, method)


# ---------------------------------------------------------------------------- names, expiry


def test_an_entry_carries_a_name_and_an_expiry_that_round_trip() -> None:
    entry = f"{ADMIN_ENTRY};name=ops-laptop;expires=2027-01-31T00:00:00Z"
    parsed = parse_entry(entry, "test")
    assert parsed.name == "ops-laptop" and parsed.label == "ops-laptop"
    assert parsed.expires == datetime(2027, 1, 31, tzinfo=UTC)
    assert parsed.entry == entry
    assert parse_entry(ADMIN_ENTRY, "test").label == ADMIN_ENTRY.split(":")[2][:8]
    assert parse_entry(f"{ADMIN_ENTRY};expires=2027-01-31", "t").expires == datetime(
        2027, 1, 31, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("suffix", "problem"),
    [
        (";name=", "name must be"),
        (";name=has space", "name must be"),
        (";expires=next tuesday", "ISO 8601"),
        (";owner=me", "unknown attribute"),
    ],
)
def test_a_bad_attribute_is_named_without_the_entry(suffix: str, problem: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_entry(ADMIN_ENTRY + suffix, "keys line 4")
    assert str(error.value).startswith("keys line 4: ") and problem in str(error.value)
    assert ADMIN_ENTRY.split(":")[2] not in str(error.value)


def test_an_expired_key_is_refused_and_a_live_one_of_the_same_name_is_not() -> None:
    keys = ApiKeys.from_entries(
        [
            f"{ADMIN_ENTRY};name=old;expires=2026-01-01T00:00Z",
            f"{PREDICT_ENTRY};name=new;expires=2030-01-01T00:00Z",
        ]
    )
    now = datetime(2026, 6, 1, tzinfo=UTC)
    refused = keys.authorize(ADMIN_KEY, Scope.ADMIN, now=now)
    assert refused.status == 401
    assert keys.authorize(ADMIN_KEY, Scope.ADMIN, now=datetime(2025, 1, 1, tzinfo=UTC)).key == "old"
    assert keys.authorize(PREDICT_KEY, Scope.PREDICT, now=now) == AuthDecision(
        200, "ok", Scope.PREDICT, "new"
    )


def test_an_unknown_key_is_named_by_a_fingerprint_never_by_itself() -> None:
    keys = ApiKeys.from_entries([ADMIN_ENTRY])
    decision = keys.authorize("rsk_not_a_configured_key", Scope.ADMIN)
    assert decision.status == 401
    assert decision.key is not None and decision.key.startswith("unknown ")
    assert "rsk_" not in decision.key
