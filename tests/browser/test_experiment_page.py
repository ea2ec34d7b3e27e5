"""The results page (``GET /ui``) in a real browser: Debian's Chromium, driven by
Playwright, against a real deployment with API keys on, labelled traffic, a shadow and an
automatic rollout in progress. The page must show the figures ``GET /experiment`` and
``GET /rollout`` answer, draw every chart, log no console error, switch to an earlier
experiment, and refuse a browser without the admin key.

Screenshots at a laptop's and a phone's width are taken every run; set
``RAYSPLIT_UI_SCREENSHOTS=docs`` to write them over docs/ui_desktop.png and docs/ui_phone.png.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from raysplit.cli.traffic import send
from raysplit.eventstore.schema import BUCKET_S
from serve_app.http.auth import Scope, entry_for, new_key
from tests.conftest import REPO, Cluster
from tests.integration.serving import Deployer, variants

pytestmark = pytest.mark.integration

ADMIN, PREDICT = new_key(), new_key()
BEARER = {"Authorization": f"Bearer {ADMIN}"}
CHARTS = ("intervals", "quality", "pvalue", "share", "latency", "rollout", "drift")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium() -> str:
    """Debian's Chromium, the command the Makefile's TEST_PACKAGES installs and checks
    (`chromium:chromium`); Playwright downloads no browser."""
    path = shutil.which("chromium")
    assert path, "Chromium is not installed: apt-get install chromium (make test does)"
    return path


def get(deployer: Deployer, path: str, **params: Any) -> dict[str, Any]:
    response = requests.get(f"{deployer.url}{path}", params=params, headers=BEARER, timeout=30)
    response.raise_for_status()
    return response.json()


def settled(deployer: Deployer, name: str, timeout: float = 90) -> dict[str, Any]:
    """The report and rollout once they stop changing (feedback is written off the request
    path, and the controller may still take a step on what arrived last)."""
    deadline = time.monotonic() + timeout
    before = None
    while time.monotonic() < deadline:
        report = get(deployer, "/experiment", experiment=name)
        rollout = get(deployer, "/rollout")["rollout"]
        now = (
            [(v["name"], v["assigned"], v["feedback"]) for v in report["variants"]],
            rollout and (rollout["phase"], rollout["step"], rollout["share"]),
        )
        if now == before:
            return report
        before = now
        time.sleep(3)
    raise AssertionError(f"the experiment kept changing: {before}")


def started(deployer: Deployer, timeout: float = 120) -> None:
    """Until every replica serves the rollout's first step (the controller starts it)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, bool] = {}
    while time.monotonic() < deadline:
        models = get(deployer, "/models")
        weights = {v["name"]: v["weight"] for v in models["variants"]}
        seen[models["replica"]] = weights["challenger"] > 0
        running = deployer.replica_ids()
        if running and all(seen.get(r) for r in running):
            return
        time.sleep(0.5)
    raise AssertionError(f"the rollout did not start on every replica: {seen}")


@pytest.fixture(scope="module")
def page_deployment(deployer: Deployer, cluster: Cluster) -> Iterator[dict[str, str]]:
    """Keys on; an earlier experiment with a little traffic, then the served one: champion
    against a challenger that an automatic rollout is moving through 20/50/80 %, and a
    shadow, with labelled traffic sent as `raysplit traffic --feedback` sends it."""
    keys = f"{entry_for(ADMIN, Scope.ADMIN)} {entry_for(PREDICT, Scope.PREDICT)}"
    env = {"RAYSPLIT_API_KEYS": keys, "RAYSPLIT_DASHBOARD_URL": cluster.info.dashboard_url}
    options = {"runtime_env": {"env_vars": env}}
    earlier, name = f"ui-earlier-{os.getpid()}", f"ui-{os.getpid()}"
    deployer.deploy(
        {"experiment": earlier, "salt": "ui", "variants": variants(50, 50)}, actor_options=options
    )
    lines = send(deployer.url, "iris", 60, users=20, feedback=True, auth=BEARER)
    assert " 0 failed" in lines[0], lines
    deployer.deploy(
        {
            "experiment": name,
            "salt": "ui",
            "report_interval_s": 0,
            "variants": variants(100, 0, shadow=True),
            "rollout": {
                "candidate": "challenger",
                "steps": [20, 50, 80],
                "min_scored_per_step": 30,
                "min_step_s": 1,
                "non_inferiority_margin": 0.05,
                # a few dozen rows' PSI and a k-NN's latency are noise here (as in
                # test_rollout_http.py): the page shows them, the rollout ignores them
                "guardrails": {"max_p95_latency_ratio": None, "max_psi": None},
                "evaluation_interval_s": 1,
            },
        },
        actor_options=options,
    )
    started(deployer)
    # enough for the always-valid test to look (100 labelled a side) at a 20 % start, in two
    # of the event store's minutes, so that the charts over time have a line to draw
    for round in range(2):
        if round:
            time.sleep(BUCKET_S - time.time() % BUCKET_S + 1)
        lines = send(deployer.url, "iris", 300, users=40, feedback=True, auth=BEARER)
        assert " 0 failed" in lines[0], lines
    yield {"name": name, "earlier": earlier}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium())
        yield browser
        browser.close()


def open_page(browser: Browser, url: str, viewport: dict[str, int], **options: Any):
    """A page with the admin key (HTTP Basic, as a browser sends it after asking) that
    records every console error, uncaught exception and failed request."""
    context = browser.new_context(
        viewport=viewport,
        http_credentials={"username": "admin", "password": ADMIN},
        **options,
    )
    page = context.new_page()
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.goto(url)
    page.wait_for_selector("body[data-loaded]", timeout=60_000)
    return page, problems


def field(page: Page, variant: str, name: str):
    return page.locator(f'#variants tr[data-variant="{variant}"] td[data-field="{name}"]')


def value(page: Page, variant: str, name: str) -> float | None:
    raw = field(page, variant, name).get_attribute("data-value")
    return float(raw) if raw else None


def shots_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("RAYSPLIT_UI_SCREENSHOTS")
    return (REPO / configured) if configured else tmp_path


def test_without_the_admin_key_the_page_is_refused(
    page_deployment: dict[str, str], deployer: Deployer, browser: Browser
) -> None:
    for path in ("/ui", "/ui/app.js", "/ui/links", "/experiments", "/experiment/timeline"):
        refused = requests.get(f"{deployer.url}{path}", timeout=30)
        assert refused.status_code == 401, (path, refused.text)
        # a Basic challenge, so that a browser asks its user for the key
        assert 'Basic realm="raysplit"' in refused.headers["www-authenticate"], path
        predict = requests.get(f"{deployer.url}{path}", auth=("me", PREDICT), timeout=30)
        assert predict.status_code == 403, (path, predict.text)
    context = browser.new_context()  # a browser that has no key to answer the challenge with
    try:
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            context.new_page().goto(f"{deployer.url}/ui")
    finally:
        context.close()
    page = requests.get(f"{deployer.url}/ui", auth=("anyone", ADMIN), timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_the_page_shows_what_the_api_serves_and_draws_every_chart(
    page_deployment: dict[str, str], deployer: Deployer, browser: Browser, tmp_path: Path
) -> None:
    name = page_deployment["name"]
    report = settled(deployer, name)
    view = get(deployer, "/rollout")
    assert view["rollout"] and view["rollout"]["phase"] == "running", view["rollout"]
    assert any(v["drift"] for v in report["variants"]), "no drift figures to draw"
    timeline = get(deployer, "/experiment/timeline")
    looks = [c for p in timeline["points"] for c in p["comparisons"] if c["always_valid_p_value"]]
    assert looks, f"no always-valid p-value to draw: {report['comparisons']}"
    assert len(timeline["points"]) >= 2, timeline["points"]
    page, problems = open_page(browser, f"{deployer.url}/ui", DESKTOP)

    assert page.inner_text("#experiment-name") == name
    verdicts = page.get_attribute("#verdict", "data-verdicts")
    assert verdicts == "|".join(c["verdict"] for c in report["comparisons"])
    assert page.locator("#variants tbody tr").count() == len(report["variants"])
    for v in report["variants"]:
        assert field(page, v["name"], "assigned").inner_text() == str(v["assigned"])
        assert field(page, v["name"], "errors").inner_text() == str(v["errors"])
        assert value(page, v["name"], "assigned") == v["assigned"]
        assert value(page, v["name"], "observed_share") == v["observed_share"]
        assert value(page, v["name"], "expected_share") == v["expected_share"]
        assert value(page, v["name"], "label_coverage") == v["label_coverage"]
        accuracy = v["accuracy"]["estimate"] if v["accuracy"] else None
        assert value(page, v["name"], "accuracy") == accuracy
        if accuracy is not None:  # "97.3% [95.1%, 98.6%]": the estimate to 0.1 points
            shown = float(field(page, v["name"], "accuracy").inner_text().split("%")[0])
            assert abs(shown - 100 * accuracy) <= 0.05 + 1e-9, (shown, accuracy)
    shadow = next(v for v in report["variants"] if v["shadow"])
    agreement = page.locator(f'#shadows tr[data-variant="{shadow["name"]}"] td').first
    assert float(agreement.get_attribute("data-value")) == shadow["agreement_with_live"]["estimate"]

    rollout = view["rollout"]
    assert page.get_attribute("#rollout-state", "data-phase") == rollout["phase"]
    shown = page.get_attribute('#rollout-state [data-field="share"]', "data-value")
    assert float(shown) == rollout["share"]
    assert page.locator('#decisions tr[data-kind="start"]').count() == 1

    # a line and a band per variant that has an interval at two points or more
    quality = page.locator("#chart-quality svg")
    assert quality.locator("path").count() == len(report["variants"])
    assert quality.locator("polygon").count() == len(report["variants"])
    for chart in CHARTS:
        figure = page.locator(f"#chart-{chart}")
        assert figure.get_attribute("data-drawn") == "true", chart
        marks = figure.locator("svg circle, svg rect, svg path, svg polygon").count()
        assert marks > 0, chart
        assert figure.locator("svg").get_attribute("aria-label"), chart
        assert figure.locator("details table tbody tr").count() > 0, chart  # its text form
    assert page.get_attribute("#ray-dashboard", "href") == deployer.cluster.info.dashboard_url
    assert page.locator("#deploy-refused").is_hidden()  # the last deploy was applied
    assert problems == []

    shots = shots_dir(tmp_path)
    page.screenshot(path=str(shots / "ui_desktop.png"), full_page=True)
    page.context.close()
    phone, problems = open_page(
        browser, f"{deployer.url}/ui", PHONE, is_mobile=True, device_scale_factor=2
    )
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"
    phone.screenshot(path=str(shots / "ui_phone.png"), full_page=True)
    assert problems == []
    phone.context.close()
    for shot in ("ui_desktop.png", "ui_phone.png"):
        assert (shots / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_earlier_experiment_is_one_choice_away(
    page_deployment: dict[str, str], deployer: Deployer, browser: Browser
) -> None:
    earlier = page_deployment["earlier"]
    listed = get(deployer, "/experiments")
    assert listed["current"] == page_deployment["name"]
    assert earlier in [e["experiment"] for e in listed["experiments"]]
    report = get(deployer, "/experiment", experiment=earlier)
    page, problems = open_page(browser, f"{deployer.url}/ui", DESKTOP)
    page.select_option("#experiment-select", earlier)
    expect(page.locator("#experiment-name")).to_have_text(earlier, timeout=30_000)
    assert "experiment=" in page.url
    assert page.locator("#rollout-section").is_hidden()
    for v in report["variants"]:
        assert field(page, v["name"], "assigned").inner_text() == str(v["assigned"])
    assert problems == []
    page.context.close()


def models_everywhere(deployer: Deployer, status: str, replicas: int = 2) -> None:
    """Until ``replicas`` replicas answer GET /models with ``deploy.status`` ``status``."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < replicas:
        models = get(deployer, "/models")
        if models["deploy"]["status"] == status:
            seen.add(models["replica"])
        assert time.monotonic() < deadline, models["deploy"]
        time.sleep(0.2)


def test_a_refused_deploy_is_said_on_the_page(
    page_deployment: dict[str, str], deployer: Deployer, browser: Browser
) -> None:
    """A refused deploy changes nothing that is served, so the page says it in words, and
    stops saying it once a good deploy is applied."""
    good = deployer.last_running()
    bad = copy.deepcopy(good)
    variants_of = bad["applications"][0]["deployments"][0]["user_config"]["variants"]
    variants_of[1]["model_uri"] = "models:/iris@typo"
    deployer.apply(bad)  # RUNNING: every replica refused it and kept its config
    models_everywhere(deployer, "REFUSED")
    page, problems = open_page(browser, f"{deployer.url}/ui", DESKTOP)
    banner = page.locator("#deploy-refused")
    expect(banner).to_be_visible()
    assert "models:/iris@typo" in banner.inner_text()
    assert "Still serving config" in banner.inner_text()
    page.context.close()
    deployer.apply(good)
    models_everywhere(deployer, "APPLIED")
    page, more = open_page(browser, f"{deployer.url}/ui", DESKTOP)
    assert page.locator("#deploy-refused").is_hidden()
    assert problems == more == []
    page.context.close()
