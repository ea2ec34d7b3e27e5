"""Optional API-key authentication for the ingress, as pure logic (no Ray, no FastAPI).

Off by default: with no keys configured every request is allowed, which is right for an
ingress bound to loopback (only processes on the machine can reach it). Keys come from
``RAYSPLIT_API_KEYS`` (entries separated by commas and/or whitespace) and from a file
named by ``RAYSPLIT_API_KEYS_FILE`` (one entry per line, ``#`` comments), for example a
Kubernetes Secret mounted as a file; both may be given and their entries are merged.

An entry is ``<scope>:sha256:<64 lowercase hex>``, optionally followed by
``;name=<name>`` (what the audit trail calls the key; by default the digest's first 8 hex
digits) and ``;expires=<ISO 8601 time>`` (refused from then on): keys are stored *hashed
only*, so a leaked secret file, environment dump or config does not leak usable keys. Mint one with
``raysplit keys new --scope predict``. A presented key is hashed and compared with every
stored digest by :func:`hmac.compare_digest`, without stopping at the first match, so the
response time tells an attacker neither which entry matched nor how many there are.

Scopes: ``predict`` calls the models (``POST /predict`` and the Open Inference Protocol
routes under ``/v2/models/``); ``admin`` can do that and everything else (feedback,
reports, history, variants). Health probes and the API docs are open. Unknown routes need
``admin``: a route added later is closed until it is classified here.

The ingress wires it as: ``keys = ApiKeys.from_environment(os.environ)`` once, then per
request ``keys.authorize(presented_key(request.headers), required_scope(method, path))``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

KEYS_ENV = "RAYSPLIT_API_KEYS"
KEYS_FILE_ENV = "RAYSPLIT_API_KEYS_FILE"
KEY_PREFIX = "rsk_"
DIGEST_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# methods a browser sends on its own for a page of another site only with safe semantics:
# HTTP Basic credentials it caches are accepted on these alone
SAFE_METHODS = frozenset({"GET", "HEAD"})
_SEPARATORS = re.compile(r"[,\s]+")

# A 401's WWW-Authenticate challenges, one header each: Bearer for API clients (RFC 6750),
# Basic so that a browser asks its user for the key (as the password) and sends it
CHALLENGES = ('Bearer realm="raysplit"', 'Basic realm="raysplit", charset="UTF-8"')

MISSING_KEY_MESSAGE = (
    "missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>"
)


class Scope(StrEnum):
    """What a key may do. ``admin`` implies ``predict``."""

    PREDICT = "predict"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        """Whether a key with this scope may call a route that needs ``needed``."""
        return self is Scope.ADMIN or needed is Scope.PREDICT


# ---------------------------------------------------------------------------- keys


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of the UTF-8 key: the only form a key is ever stored in.

    A plain (unsalted, fast) hash is enough because minted keys carry 256 random bits;
    there is nothing to brute-force the way there is with a password.
    """
    return DIGEST_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh key: ``rsk_`` then 32 random bytes, URL-safe base64 (43 characters).

    The prefix makes a leaked key recognisable to secret scanners and to people.
    """
    return KEY_PREFIX + secrets.token_urlsafe(32)


def entry_for(
    key: str, scope: Scope, name: str | None = None, expires: datetime | None = None
) -> str:
    """The entry line that grants ``key`` the ``scope`` (with its name and expiry)."""
    return KeyEntry(Scope(scope), hash_key(key).removeprefix(DIGEST_PREFIX), name, expires).entry


@dataclass(frozen=True)
class KeyEntry:
    """One configured key: its scope and the hex sha256 of the key (never the key), and
    optionally a name for the audit trail and the moment it stops working."""

    scope: Scope
    digest: str  # 64 lowercase hex digits
    name: str | None = None
    expires: datetime | None = None  # timezone-aware

    @property
    def entry(self) -> str:
        text = f"{self.scope}:{DIGEST_PREFIX}{self.digest}"
        if self.name:
            text += f";name={self.name}"
        if self.expires:
            text += f";expires={self.expires.isoformat().replace('+00:00', 'Z')}"
        return text

    @property
    def label(self) -> str:
        """What logs and the decision log call the key: its name, else a fingerprint
        (8 hex digits of the hash: enough to tell keys apart, useless to an attacker)."""
        return self.name or self.digest[:8]

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


def fingerprint(presented: str) -> str:
    """The label an unknown presented key is logged under (never the key itself)."""
    return "unknown " + hashlib.sha256(presented.encode("utf-8")).hexdigest()[:8]


def _parse_expiry(value: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{where}: expires must be an ISO 8601 date or time, e.g. 2027-01-31T00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_entry(text: str, where: str) -> KeyEntry:
    """Parse ``<scope>:sha256:<64 lowercase hex>``.

    ``where`` names the entry in errors ("RAYSPLIT_API_KEYS entry 2", "<file> line 3").
    The error never contains ``text`` or any part of it: a malformed entry is often a
    plaintext key pasted by mistake.
    """
    expected = (
        f"expected '<scope>:{DIGEST_PREFIX}<64 hex digits>' (mint one with `raysplit keys new`)"
    )
    head, *attributes = text.strip().split(";")
    name = expires = None
    for attribute in attributes:
        key, equals, value = attribute.partition("=")
        if key == "name" and equals and _NAME.fullmatch(value):
            name = value
        elif key == "name":
            raise ValueError(f"{where}: name must be 1 to 64 of A-Z a-z 0-9 _ . @ -")
        elif key == "expires" and equals:
            expires = _parse_expiry(value, where)
        else:
            raise ValueError(f"{where}: unknown attribute (expected ;name=... or ;expires=...)")
    parts = head.split(":")
    if len(parts) != 3 or parts[1] != DIGEST_PREFIX.rstrip(":"):
        hint = "; it looks like a plaintext key, store only its hash" if ":" not in text else ""
        raise ValueError(f"{where}: not a hashed key entry: {expected}{hint}")
    scope, _, digest = parts
    if scope not in {s.value for s in Scope}:
        names = " or ".join(s.value for s in Scope)
        raise ValueError(f"{where}: unknown scope, expected {names}")
    if not _HEX64.fullmatch(digest):
        problem = (
            "has characters other than 0-9 and a-f"
            if len(digest) == 64
            else f"has {len(digest)} characters"
        )
        raise ValueError(f"{where}: the digest must be 64 lowercase hex digits; this one {problem}")
    return KeyEntry(Scope(scope), digest, name, expires)


def _from_env_value(value: str) -> list[KeyEntry]:
    items = [item for item in _SEPARATORS.split(value.strip()) if item]
    return [parse_entry(item, f"{KEYS_ENV} entry {n}") for n, item in enumerate(items, 1)]


def _from_file(path: str) -> list[KeyEntry]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ValueError(f"{KEYS_FILE_ENV}: cannot read {path}: {reason}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path} line {number}"
        if _SEPARATORS.search(line):
            raise ValueError(f"{where}: one entry per line")
        entries.append(parse_entry(line, where))
    if not entries:
        # naming a file says "turn authentication on": an empty one must not leave it off
        raise ValueError(f"{KEYS_FILE_ENV}: {path} has no key entries")
    return entries


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class AuthDecision:
    """The outcome for one request: 200 (go on), 401 (who are you?) or 403 (not allowed)."""

    status: int
    message: str = "ok"
    scope: Scope | None = None  # of the key that matched, if any
    key: str | None = None  # the matched key's label, or an unknown key's fingerprint

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the refusal should carry (RFC 6750 asks 401s to name Bearer)."""
        return {"WWW-Authenticate": 'Bearer realm="raysplit"'} if self.status == 401 else {}


ALLOWED = AuthDecision(200)


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, hashed. Empty means authentication is off."""

    entries: tuple[KeyEntry, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str], source: str = "entry") -> ApiKeys:
        """From entry strings; ``source`` prefixes the position in errors."""
        return cls(tuple(parse_entry(e, f"{source} {n}") for n, e in enumerate(entries, 1)))

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> ApiKeys:
        """Merge ``RAYSPLIT_API_KEYS`` and the file named by ``RAYSPLIT_API_KEYS_FILE``.

        Either may be unset or empty. Raises :class:`ValueError` naming the bad entry (by
        position, never by value) or the unreadable file.
        """
        entries = _from_env_value(env.get(KEYS_ENV, ""))
        path = env.get(KEYS_FILE_ENV, "").strip()
        if path:
            entries += _from_file(path)
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def find(self, presented: str | None, now: datetime | None = None) -> KeyEntry | None:
        """The entry ``presented`` matches, admin first if it is listed under both; None
        if it matches none or only expired ones.

        Every stored digest is compared, in constant time each, whatever matched before.
        """
        if not presented:
            return None
        now = now or datetime.now(UTC)
        digest = hashlib.sha256(presented.encode("utf-8")).hexdigest().encode("ascii")
        best: KeyEntry | None = None
        for entry in self.entries:
            hit = hmac.compare_digest(digest, entry.digest.encode("ascii"))
            if hit and not entry.expired(now) and (best is None or entry.scope is Scope.ADMIN):
                best = entry
        return best

    def match(self, presented: str | None, now: datetime | None = None) -> Scope | None:
        """The scope ``presented`` holds, or None."""
        entry = self.find(presented, now)
        return entry.scope if entry else None

    def authorize(
        self,
        presented: str | None,
        needed: Scope | None,
        route: str | None = None,
        now: datetime | None = None,
    ) -> AuthDecision:
        """Decide one request.

        ``needed`` comes from :func:`required_scope` (None: an open route). ``route``,
        e.g. ``"POST /feedback"``, only makes the 403 message more specific.
        """
        if needed is None or not self.enabled:
            return ALLOWED
        entry = self.find(presented, now)
        if entry is None:
            return AuthDecision(
                401, MISSING_KEY_MESSAGE, key=fingerprint(presented) if presented else None
            )
        if not entry.scope.allows(needed):
            what = route or "this route"
            return AuthDecision(
                403,
                f"this API key has scope '{entry.scope}'; {what} needs '{needed}'",
                entry.scope,
                entry.label,
            )
        return AuthDecision(200, "ok", entry.scope, entry.label)


# ---------------------------------------------------------------------------- requests


def presented_key(headers: Mapping[str, str], method: str = "GET") -> str | None:
    """The key from ``Authorization: Bearer <key>`` (any case of "Bearer"), else from
    ``X-API-Key``. Header names are looked up in lowercase, as Starlette stores them.

    ``Authorization: Basic`` carries the key as its password (any user name) on GET and
    HEAD only: that is what a browser sends for the results page (``GET /ui``) after asking
    its user, and then for the page's own reads. A browser also sends those cached
    credentials by itself with a form or a no-cors ``fetch`` that a page of *another* site
    aims at this origin, so they never authorise a request that changes anything; the
    headers that do (Bearer, X-API-Key) are ones such a page cannot set."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        basic = scheme.lower() == "basic" and method.upper() in SAFE_METHODS
        password = _basic_password(credentials.strip()) if basic else None
        if password:
            return password
    key = headers.get("x-api-key")
    return (key.strip() or None) if key else None


def basic_on_unsafe_method(headers: Mapping[str, str], method: str) -> bool:
    """Whether the only credentials are HTTP Basic on a method they cannot authorise."""
    authorization = (headers.get("authorization") or "").strip().lower()
    return (
        method.upper() not in SAFE_METHODS
        and authorization.startswith("basic ")
        and not headers.get("x-api-key")
    )


BASIC_REFUSED_MESSAGE = (
    "HTTP Basic credentials are accepted only on GET and HEAD (the results page): a browser"
    " would send them for any site's form; send Authorization: Bearer <key> or X-API-Key: <key>"
)


def _basic_password(credentials: str) -> str | None:
    """The password of Basic ``user:password`` credentials, None if they do not decode."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return (password.strip() or None) if colon else None


OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
PREDICT_PREFIX = "/v2/models/"


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs; None for the open routes (health probes, API docs).

    ``predict``: ``POST /predict`` and anything under ``/v2/models/``. ``admin``:
    everything else, including paths no route serves (default deny).
    """
    method = method.upper()
    if len(path) > 1:
        path = path.removesuffix("/")  # FastAPI redirects "/x/" to "/x"
    segments = path.split("/")
    if "." in segments or ".." in segments:
        return Scope.ADMIN  # never let "/v2/models/../feedback" pass as a model route
    if method in ("GET", "HEAD") and path in OPEN_PATHS:
        return None
    if (method == "POST" and path == "/predict") or path.startswith(PREDICT_PREFIX):
        return Scope.PREDICT
    return Scope.ADMIN


# ---------------------------------------------------------------------------- exposure


def bind_is_loopback(host: str | None) -> bool:
    """Whether ``host`` (the ingress bind address) is reachable only from this machine."""
    if host is None:
        return False
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def exposure_warning(host: str | None, keys: ApiKeys) -> str | None:
    """A loud one-line warning when the ingress binds a non-loopback address with no keys,
    else None. Meant for the replica log at start-up."""
    if keys.enabled or bind_is_loopback(host):
        return None
    where = host if host else "an unspecified address"
    return (
        f"WARNING: RAYSPLIT INGRESS IS OPEN: it binds {where} (not loopback) and API keys"
        f" are OFF, so anyone who can reach the port can predict, send feedback and read"
        f" prediction history; set {KEYS_ENV} or {KEYS_FILE_ENV} (raysplit keys new,"
        f" docs/security.md)"
    )
