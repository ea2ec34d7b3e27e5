"""Operators' credentials cannot be used by another site, over real HTTP on a deployment
with named keys from a keys file and a rollout running: the requests another site's page
can make a browser send change nothing; the same commands with a bearer key work and the
decision log names the key; `raysplit keys list` shows each key's last use; a key removed
from the file stops working on every replica within seconds, under load, while the key
that replaced it keeps working. (The same vectors from a real browser: tests/browser.)"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from serve_app.http.auth import Scope, entry_for, new_key
from tests.conftest import REPO, Cluster
from tests.faults.load import BackgroundLoad
from tests.integration.serving import RECORD, Deployer, user_config

pytestmark = pytest.mark.integration

ADMIN, OLD, NEW, EXPIRED = new_key(), new_key(), new_key(), new_key()
EVIL = "http://evil.example"
HANG_CAP_S = 120
HOLDING_ROLLOUT = {
    "candidate": "challenger",
    "steps": [10, 50],
    "min_scored_per_step": 1_000_000,  # never enough labels: it holds
    "min_step_s": 1,
    "guardrails": {"max_p95_latency_ratio": None, "max_psi": None},
    "evaluation_interval_s": 1,
}


def keys_file(path: Path, *entries: str) -> None:
    """Replace the file at once, as a Secret update or an editor's rename does."""
    staged = path.with_suffix(".new")
    staged.write_text("\n".join(["# raysplit keys", *entries]) + "\n")
    staged.replace(path)


ADMIN_ENTRY = entry_for(ADMIN, Scope.ADMIN, name="ops")
OLD_ENTRY = entry_for(OLD, Scope.PREDICT, name="client-2026")
EXPIRED_ENTRY = entry_for(EXPIRED, Scope.ADMIN, name="left-last-year") + ";expires=2025-12-31"


@pytest.fixture(scope="module")
def guarded(deployer: Deployer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Deployer, Path]:
    secret = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file(secret, ADMIN_ENTRY, OLD_ENTRY, EXPIRED_ENTRY)
    env = {"RAYSPLIT_API_KEYS_FILE": str(secret)}
    config = user_config(experiment=f"xsite-{uuid.uuid4().hex[:6]}", rollout=HOLDING_ROLLOUT)
    deployer.deploy(config, actor_options={"runtime_env": {"env_vars": env}})
    return deployer, secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str) -> dict[str, str]:
    """What a browser sends by itself once its user typed the key on the results page."""
    return {"Authorization": "Basic " + base64.b64encode(f"operator:{key}".encode()).decode()}


def rollout(deployer: Deployer) -> dict:
    response = requests.get(f"{deployer.url}/rollout", headers=bearer(ADMIN), timeout=30)
    response.raise_for_status()
    return response.json()


def commands(view: dict) -> list[dict]:
    return [d for d in view["decisions"] if d["kind"] not in ("hold", "start")]


def test_what_another_sites_page_can_send_changes_nothing(guarded: tuple[Deployer, Path]) -> None:
    deployer, _ = guarded
    deadline = time.monotonic() + 60
    while (before := rollout(deployer))["rollout"] is None:
        assert time.monotonic() < deadline, "the rollout never started"
        time.sleep(0.5)
    assert before["rollout"]["phase"] == "running"
    answer = requests.post(
        f"{deployer.url}/predict", json=RECORD, headers=bearer(ADMIN), timeout=30
    ).json()
    form = {
        **basic(ADMIN),
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": EVIL,
        "Sec-Fetch-Site": "cross-site",
    }
    for path in ("/rollout/pause", "/rollout/abort", "/rollout/promote", "/retrain"):
        refused = requests.post(f"{deployer.url}{path}", data="", headers=form, timeout=30)
        assert refused.status_code == 403, (path, refused.text)
        assert "another site" in refused.json()["detail"]
    # the same-origin text/plain feedback of the issue: Basic does not count on a POST
    own = {"Origin": deployer.url, "Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain"}
    label = f'{{"request_id": "{answer["request_id"]}", "label": "setosa"}}'
    refused = requests.post(
        f"{deployer.url}/feedback", data=label, headers={**own, **basic(ADMIN)}, timeout=30
    )
    assert refused.status_code == 401, refused.text
    assert "Basic credentials are accepted only on GET and HEAD" in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == 'Bearer realm="raysplit"'  # no Basic prompt
    # with a bearer key, a body that is not declared JSON is still refused
    typed = requests.post(
        f"{deployer.url}/feedback", data=label, headers={**own, **bearer(ADMIN)}, timeout=30
    )
    assert typed.status_code == 415, typed.text
    assert "Content-Type: application/json" in typed.json()["detail"]
    # an expired key is refused everywhere
    assert (
        requests.get(f"{deployer.url}/rollout", headers=bearer(EXPIRED), timeout=30).status_code
        == 401
    )

    after = rollout(deployer)
    assert after["rollout"]["phase"] == "running" and commands(after) == commands(before) == []
    experiment = requests.get(f"{deployer.url}/experiment", headers=bearer(ADMIN), timeout=30)
    assert sum(v["feedback"] for v in experiment.json()["variants"]) == 0

    # the operator's own commands, with the key in a header no other site can set
    paused = requests.post(f"{deployer.url}/rollout/pause", headers=bearer(ADMIN), timeout=30)
    assert paused.status_code == 200, paused.text
    resumed = requests.post(f"{deployer.url}/rollout/resume", headers=bearer(ADMIN), timeout=30)
    assert resumed.status_code == 200, resumed.text
    acted = commands(rollout(deployer))
    assert [d["kind"] for d in acted] == ["pause", "resume"]
    assert all(d["actor"].startswith("operator ops via ") for d in acted), acted


def keys_list(deployer: Deployer) -> list[str]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "raysplit"), "keys", "list", "--url", deployer.url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAYSPLIT_API_KEY": ADMIN},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_keys_list_names_every_key_with_its_last_use(guarded: tuple[Deployer, Path]) -> None:
    deployer, _ = guarded
    requests.post(f"{deployer.url}/predict", json=RECORD, headers=bearer(OLD), timeout=30)
    requests.get(f"{deployer.url}/rollout", headers=bearer(OLD), timeout=30)  # 403: scope
    deadline = time.monotonic() + 60  # replicas add their counts every 5 s
    while True:
        rows = {line.split()[0]: line for line in keys_list(deployer)[1:]}
        client = rows.get("client-2026", "")
        if "never" not in client and client.split()[-1] != "0":
            break
        assert time.monotonic() < deadline, rows
        time.sleep(1)
    assert set(rows) >= {"ops", "client-2026", "left-last-year"}, rows
    assert rows["ops"].split()[1] == "admin" and "never" not in rows["ops"]
    assert rows["left-last-year"].split()[2:4] == ["2025-12-31T00:00:00Z", "(expired)"]
    assert ADMIN not in "\n".join(rows.values()) and OLD not in "\n".join(rows.values())


def test_a_key_rotates_without_a_restart_under_load(guarded: tuple[Deployer, Path]) -> None:
    """The new key added beside the old one, clients moved to it, the old one removed:
    not one request with a valid key fails, and the old key comes to be refused on every
    replica (the time it took is printed: 1.0 s in this session's runs)."""
    deployer, secret = guarded
    replicas = deployer.replica_ids()
    with BackgroundLoad(
        deployer.url, "rotate-old", connections=1, pause_s=0.05, headers=bearer(OLD)
    ) as old_load:
        keys_file(secret, ADMIN_ENTRY, OLD_ENTRY, entry_for(NEW, Scope.PREDICT, name="client-2027"))
        # progress: until every replica takes the new key
        accepted: set[str] = set()
        deadline = time.monotonic() + HANG_CAP_S
        while accepted != replicas:
            reply = requests.post(
                f"{deployer.url}/predict", json=RECORD, headers=bearer(NEW), timeout=30
            )
            if reply.status_code == 200:
                accepted.add(reply.headers["x-raysplit-replica"])
            assert time.monotonic() < deadline, f"the new key works on {accepted} of {replicas}"
    assert old_load.samples and not old_load.failures(), old_load.failures()[:5]

    with BackgroundLoad(
        deployer.url, "rotate-new", connections=1, pause_s=0.05, headers=bearer(NEW)
    ) as new_load:
        removed = time.monotonic()
        keys_file(secret, ADMIN_ENTRY, entry_for(NEW, Scope.PREDICT, name="client-2027"))
        # every replica refuses it: 20 refusals in a row over fresh connections, which
        # the ingress spreads over the replicas (a refusal comes before any route, so it
        # does not name its replica)
        in_a_row = 0
        while in_a_row < 20:
            reply = requests.post(
                f"{deployer.url}/predict", json=RECORD, headers=bearer(OLD), timeout=30
            )
            in_a_row = in_a_row + 1 if reply.status_code == 401 else 0
            # a cap against a hang, not the claim: the time is measured and printed
            # (docs/security.md), as a loaded machine may take longer than an idle one
            assert time.monotonic() - removed < HANG_CAP_S, "the removed key still works"
        revoked_s = time.monotonic() - removed
        new_load.wait_for(new_load.answered() + 20)
    print(
        f"rotation: old key refused {revoked_s:.1f} s after its removal;"
        f" {len(old_load.samples)} + {len(new_load.samples)} requests with valid keys"
    )
    assert new_load.samples and not new_load.failures(), new_load.failures()[:5]


EVIL_PAGE = """<!doctype html><title>another site</title><body><script>
const query = new URLSearchParams(location.search);
const target = query.get("target"), mode = query.get("mode");
const body = JSON.stringify({request_id: query.get("request_id"), label: "virginica"});
if (mode === "form") {
  // a form that navigates the whole window: the browser attaches the Basic credentials
  // it holds for the target by itself (checked below: the test sees them sent)
  const form = document.createElement("form");
  form.method = "POST"; form.action = target; form.target = "_top";
  const input = document.createElement("input");
  input.name = "payload"; input.value = body;
  form.appendChild(input); document.body.appendChild(form);
  form.submit();
} else {
  // a fetch that needs no permission: credentials included, opaque answer
  fetch(target, {method: "POST", mode: "no-cors", credentials: "include",
                 headers: {"Content-Type": mode}, body: body})
    .catch(() => null).then(() => { document.title = "done"; });
}
</script></body>"""
ADMIN_POSTS = ("/rollout/pause", "/rollout/abort", "/rollout/promote", "/retrain", "/feedback")


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[str]:
    """A second web server, the other site: `localhost` is another site than the ingress's
    `127.0.0.1` for a browser (another port alone would be the same site)."""
    import functools
    import http.server
    import threading

    (tmp_path / "evil.html").write_text(EVIL_PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()


def test_a_real_browser_holding_the_key_is_refused_every_cross_site_vector(
    guarded: tuple[Deployer, Path], cluster: Cluster, other_site: str
) -> None:
    """Chromium holds the admin key as HTTP Basic credentials for the ingress (its user
    opened the results page), then opens a page of another site that posts a form to each
    admin route (the whole window navigates: Chromium sends the cached credentials with it)
    and sends no-cors fetches with text/plain and form bodies (Chromium sends them without
    credentials). Every one is answered 403 and nothing changes."""
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    from tests.browser.test_experiment_page import chromium

    deployer, _ = guarded
    registry = MlflowClient(
        cluster.locations.mlflow_tracking_uri, cluster.locations.mlflow_registry_uri
    )
    aliases = {a: registry.get_model_version_by_alias("iris", a).version for a in ("champion",)}
    before = rollout(deployer)
    answer = requests.post(
        f"{deployer.url}/predict", json=RECORD, headers=bearer(ADMIN), timeout=30
    ).json()
    seen: list[tuple[str, str, int, str | None]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        context = browser.new_context(
            http_credentials={"username": "operator", "password": ADMIN, "origin": deployer.url}
        )
        page = context.new_page()
        opened = page.goto(f"{deployer.url}/ui")  # the operator's own visit: Basic accepted
        assert opened is not None and opened.status == 200
        for path in ADMIN_POSTS:
            for mode in ("form", "text/plain", "application/x-www-form-urlencoded"):
                target = f"{deployer.url}{path}"
                evil = f"{other_site}/evil.html?" + urlencode(
                    {"target": target, "mode": mode, "request_id": answer["request_id"]}
                )
                with page.expect_response(
                    lambda r, t=target: r.url == t and r.request.method == "POST"
                ) as caught:
                    page.goto(evil)
                response = caught.value
                sent = response.request.all_headers()
                seen.append((path, mode, response.status, sent.get("authorization")))
        browser.close()

    print(
        "another site's requests, as the ingress answered them (path, vector, status,"
        " sent Basic credentials):",
        [(path, mode, status, bool(c)) for path, mode, status, c in seen],
    )
    assert {status for _, _, status, _ in seen} == {403}, seen
    # the forms went out with the operator's Basic credentials: the vector is real
    forms = [credentials for _, mode, _, credentials in seen if mode == "form"]
    assert forms and all(c and c.startswith("Basic ") for c in forms), seen
    after = rollout(deployer)
    assert after["rollout"]["phase"] == "running", after["rollout"]
    assert commands(after) == commands(before)  # no pause, abort or promote
    assert {a: registry.get_model_version_by_alias("iris", a).version for a in aliases} == aliases
    experiment = requests.get(f"{deployer.url}/experiment", headers=bearer(ADMIN), timeout=30)
    assert sum(v["feedback"] for v in experiment.json()["variants"]) == 0
