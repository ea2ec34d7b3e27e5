"""The `raysplit` command line: tune, promote, rollback, up, down, check, deploy, status,
traffic, report, rollout, retrain, export, prune, events, experiments, keys, info.

User mistakes surface as :class:`RaysplitError` and end the command with one line on
stderr and exit status 2, like argparse's own usage errors.

Over 600 lines on purpose: a third is :func:`build_parser` and its ``_add_*`` helpers
(one per command group), the one place that lists every command's flags and help (what
``raysplit --help`` prints), and each ``cmd_*`` is a few lines that turn parsed flags into
one call into the library; the work is elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from raysplit.cli.cluster import TOKEN_PATH, dashboard_url
from raysplit.cli.events_lake import add_lake_commands
from raysplit.cli.experiments import add_experiments_commands
from raysplit.cli.flags import add_api_key, add_app
from raysplit.core.errors import RaysplitError
from raysplit.core.settings import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_METRICS_EXPORT_PORT,
    DEFAULT_RAY_PORT,
    Locations,
)

# flag -> dotted config key; every other field is reachable as KEY=VALUE
TUNE_FLAGS: dict[str, str] = {
    "dataset": "dataset.name",
    "metric": "search.metric",
    "cv_folds": "search.cv_folds",
    "num_samples": "search.num_samples",
    "max_concurrent_trials": "search.max_concurrent_trials",
    "cpus_per_trial": "search.cpus_per_trial",
    "algorithm": "search.algorithm",
    "early_stopping": "search.early_stopping",
    "register": "register.model_name",
    "alias": "register.alias",
    "experiment": "experiment",
}


def cmd_tune(args: argparse.Namespace) -> int:
    from raysplit.cli.cluster import running_address
    from tune.config import load_spec, parse_override
    from tune.search import outcome_lines, run_search

    overrides: dict[str, Any] = dict(parse_override(item) for item in args.overrides)
    for flag, key in TUNE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.families is not None:
        overrides["search.families"] = [f.strip() for f in args.families.split(",") if f.strip()]
    spec = load_spec(args.config, overrides)
    locations = Locations.resolve()
    outcome = run_search(spec, locations, cluster_address=running_address(locations))
    print("\n".join(outcome_lines(outcome)))
    return 0


def _client():
    from tune.tracking import connect

    return connect(Locations.resolve())


def cmd_promote(args: argparse.Namespace) -> int:
    from raysplit.core.registry import move_alias

    previous = move_alias(_client(), args.name, args.alias, str(args.version))
    was = f" (was version {previous})" if previous else ""
    print(f"{args.name}@{args.alias} -> version {args.version}{was}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from raysplit.core.registry import rollback_alias

    current, target = rollback_alias(_client(), args.name, args.alias)
    print(f"{args.name}@{args.alias} -> version {target} (was version {current})")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from raysplit.cli.cluster import up

    locations = Locations.resolve()
    info = up(
        locations,
        ray_port=args.port,
        dashboard_port=args.dashboard_port,
        metrics_port=args.metrics_export_port,
        num_cpus=args.num_cpus,
        node_ip=args.node_ip_address,
        fast_path=not args.no_fast_path,
        gcs_redis=args.gcs_redis,
    )
    print(f"Ray head running at {info.address} (dashboard {info.dashboard_url})")
    if info.gcs_redis:
        print(
            f"GCS fault tolerance on: Ray's control-plane state is in Redis at"
            f" {info.gcs_redis.shown()} (namespace {info.gcs_redis.namespace}); restart a dead"
            " gcs_server within RAY_gcs_rpc_server_reconnect_timeout_s (default 60 s)"
        )
    print("Serve replicas use:")
    print(f"  RAYSPLIT_HOME={locations.home}")
    print(f"  MLFLOW_TRACKING_URI={locations.mlflow_tracking_uri}")
    if info.fast_path:
        print(
            "HAProxy fast path on: the ingress binds http_options.host from serve_config.yaml;"
            f" HAProxy's metrics (:{info.haproxy_metrics_port}/metrics) and stats"
            f" (:{info.haproxy_stats_port}/stats) ports bind all interfaces (0.0.0.0)."
        )
    print("Token authentication is on. For Ray's CLI in your shell:")
    print(f"  export RAY_AUTH_MODE=token RAY_ADDRESS={info.address}")
    print(f"  serve deploy serve_config.yaml -a {info.dashboard_url}")
    print(f"  serve status -a {info.dashboard_url}")
    print(f"Metrics: http://127.0.0.1:{info.metrics_export_port}/metrics; Prometheus config for")
    print(f"  this cluster: prometheus --config.file={locations.prometheus_config}")
    print("Stop it with: raysplit down")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from raysplit.cli.cluster import down

    locations = Locations.resolve()
    stopped = down(locations)
    if stopped:
        print(f"stopped the raysplit Ray cluster ({stopped} processes)")
    else:
        print(f"no raysplit cluster is running for {locations.home}; nothing to stop")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    from raysplit.cli.traffic import (
        Sample,
        app_url,
        auth_headers,
        default_dataset,
        file_sample,
        send,
        served_model,
        wait_ready,
    )

    if args.data is not None and args.dataset is not None:
        raise RaysplitError("give --data FILE or --dataset NAME, not both")
    url = app_url(args.url or Locations.resolve().ingress_url, args.app, args.wait)
    wait_ready(url, args.wait)
    headers = auth_headers(args.api_key)
    dataset: str | Sample = args.dataset or default_dataset(args.app)
    if args.data is not None:  # checked against what is served before anything is sent
        feedback = args.feedback or args.until_rollout_ends
        dataset = file_sample(args.data, args.target, served_model(url, headers), feedback)
    if args.until_rollout_ends:
        from raysplit.cli.traffic import drive_rollout

        print(f"sending labelled traffic in rounds of {args.requests} until the rollout ends")
        for line in drive_rollout(url, dataset, args.requests, args.users, headers, args.timeout):
            print(line, flush=True)
        return 0
    print("\n".join(send(url, dataset, args.requests, args.users, args.feedback, headers)))
    return 0


def _ingress(method: str, url: str, path: str, api_key: str | None, **options: Any) -> Any:
    """One call to the ingress with the key; a refusal or no answer is a one-line error."""
    import requests

    from raysplit.cli.traffic import auth_headers, refusal

    try:
        response = requests.request(
            method, f"{url}{path}", headers=auth_headers(api_key), timeout=60, **options
        )
    except requests.RequestException as exc:
        raise RaysplitError(f"cannot reach the ingress at {url}: {type(exc).__name__}") from exc
    if not response.ok:
        raise refusal(response)
    return response


def cmd_report(args: argparse.Namespace) -> int:
    import requests

    from raysplit.cli.traffic import app_url, auth_headers

    url = app_url(args.url or Locations.resolve().ingress_url, args.app)
    params = {"experiment": args.experiment} if args.experiment else None
    response = _ingress("GET", url, "/experiment", args.api_key, params=params)
    if args.json:
        print(response.text)
    else:
        from raysplit.cli.report_text import render

        print(render(response.json()))
    if args.mlflow:
        from raysplit.cli.report_mlflow import log_report
        from serve_app.report.experiment import ExperimentReport

        serving = requests.get(f"{url}/models", headers=auth_headers(args.api_key), timeout=60)
        run_id = log_report(
            ExperimentReport.model_validate(response.json()),
            serving.json() if serving.ok else {},
        )
        print(f"logged to MLflow as run {run_id} (experiment 'raysplit-reports')", file=sys.stderr)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from raysplit.cli.rollout_text import render

    url = args.url or Locations.resolve().ingress_url
    if args.action == "status":
        response = _ingress("GET", url, "/rollout", args.api_key)
    else:
        response = _ingress("POST", url, f"/rollout/{args.action}", args.api_key)
    print(response.text if args.json else render(response.json()))
    return 0


def _retrain_client(args: argparse.Namespace) -> Any:
    from raysplit.core.retrain_jobs import job_client

    return job_client(args.address or dashboard_url(Locations.resolve()))


def _print_retrain(job: Any) -> None:
    print(f"job {job.job_id}: {job.status} (model {job.model})")
    if job.error:
        print(f"  error: {job.error}")
    elif job.status == "FAILED" and job.message:
        print(f"  {job.message.splitlines()[0]}")
    outcome = job.outcome or {}
    if outcome:
        moved = f"alias @{outcome['alias']} moved" if outcome["promoted"] else "no alias moved"
        print(f"  registered: models:/{outcome['model']}/{outcome['version']} ({moved})")
        if outcome.get("gate"):
            print(f"  gate: {outcome['gate']['reason']}")


def cmd_retrain(args: argparse.Namespace) -> int:
    import time

    from raysplit.core.retrain_jobs import retrain_status, submit_retrain
    from tune.config import load_raw, parse_override
    from tune.retrain import retrain_spec
    from tune.retraining.event_rows import load_event_split

    if args.status:
        job = retrain_status(_retrain_client(args), args.status)
        if args.json:
            print(job.model_dump_json(indent=2))
        else:
            _print_retrain(job)
        return 0
    if args.config is None:
        raise RaysplitError("retrain: give --config FILE (or --status ID)")
    raw = load_raw(args.config, dict(parse_override(item) for item in args.overrides))
    spec = retrain_spec(raw)
    # the same checks the job makes first, here, so a retrain that cannot run is refused
    # with its reason instead of becoming a failed job
    load_event_split(
        spec.dataset,
        Locations.resolve(),
        cv_folds=spec.search.cv_folds,
        model_name=spec.registration.model_name,
    )
    client = _retrain_client(args)
    job_id = submit_retrain(client, raw)
    print(f"submitted retrain job {job_id} (Ray dashboard: Jobs)")
    if not args.wait:
        print(f"  status: raysplit retrain --status {job_id}")
        return 0
    while (job := retrain_status(client, job_id)).status in ("PENDING", "RUNNING"):
        time.sleep(2)
    _print_retrain(job)
    return 0 if job.status == "SUCCEEDED" else 1


def cmd_keys_new(args: argparse.Namespace) -> int:
    from serve_app.http.auth import KEYS_ENV, KEYS_FILE_ENV, Scope, entry_for, new_key, parse_entry

    key = new_key()
    entry = entry_for(key, Scope(args.scope))
    for attribute, value in (("name", args.name), ("expires", args.expires)):
        if value:
            entry += f";{attribute}={value}"
    try:
        parse_entry(entry, "--name/--expires")
    except ValueError as exc:
        raise RaysplitError(str(exc)) from None
    if args.json:
        print(json.dumps({"key": key, "entry": entry}))
        return 0
    print(f"API key ({args.scope} scope), shown only this once; raysplit stores only its hash:")
    print(f"  {key}")
    print(f"Entry for {KEYS_ENV} (comma/space separated) or a line of the {KEYS_FILE_ENV} file:")
    print(f"  {entry}")
    print("Clients send: Authorization: Bearer <key>  (or X-API-Key: <key>)")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    url = args.url or Locations.resolve().ingress_url
    response = _ingress("GET", url, "/keys", args.api_key)
    if args.json:
        print(response.text)
        return 0
    view = response.json()
    if not view["enabled"]:
        print("API keys are off on this ingress (docs/security.md)")
    print(f"{'KEY':<24} {'SCOPE':<8} {'EXPIRES':<26} {'LAST USED':<20} USES  REFUSED")
    for key in view["keys"]:
        last = key["last_used_at"]
        when = "never" if last is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))
        expires = (key["expires"] or "-") + (" (expired)" if key["expired"] else "")
        print(
            f"{key['key']:<24} {key['scope'] or 'removed':<8} {expires:<26} {when:<20}"
            f" {key['uses']:<5} {key['refused']}"
        )
    return 0


def _report_findings(path: Path, dashboard_url: str) -> bool:
    """Print what `raysplit check` found; whether anything refuses the config."""
    from raysplit.cli.deploy_check import check

    findings = check(path, dashboard_url)
    for finding in findings:
        print(finding.line(), file=sys.stderr)
    errors = [f for f in findings if not f.warning]
    if not errors:
        print(f"{path}: every application's config would be applied")
    return bool(errors)


def cmd_check(args: argparse.Namespace) -> int:
    dashboard = args.address or dashboard_url(Locations.resolve())
    return 2 if _report_findings(args.config, dashboard) else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from raysplit.cli.deploy_check import deploy

    dashboard = args.address or dashboard_url(Locations.resolve())
    if _report_findings(args.config, dashboard):
        print("raysplit: not deployed", file=sys.stderr)
        return 2
    deploy(args.config, dashboard)
    print(f"deployed {args.config} to {dashboard}; `raysplit status` shows what the replicas did")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from raysplit.cli.deploy_check import status_lines
    from raysplit.cli.traffic import auth_headers

    locations = Locations.resolve()
    lines = status_lines(
        args.address or dashboard_url(locations),
        args.url or locations.ingress_url,
        auth_headers(args.api_key),
    )
    print("\n".join(lines) if lines else "no Serve application is deployed")
    return 0


class RayToken(BaseModel):
    """Where Ray's token lives and how to send it: the dashboard refuses requests without
    it (``Unauthorized: Missing authentication token``) and nothing else says where it is."""

    path: Path
    exists: bool
    ray_cli: str = "set RAY_AUTH_MODE=token (e.g. RAY_AUTH_MODE=token serve status)"
    dashboard_api: str


class Info(Locations):
    """``raysplit info``'s answer: the resolved locations and Ray's token."""

    ray_auth_token: RayToken


def cmd_info(args: argparse.Namespace) -> int:
    locations = Locations.resolve()
    token = RayToken(
        path=TOKEN_PATH,
        exists=TOKEN_PATH.exists(),
        dashboard_api=f'curl -H "Authorization: Bearer $(cat {TOKEN_PATH})"'
        f" {dashboard_url(locations)}/api/serve/applications/",
    )
    info = Info(**locations.model_dump(), ray_auth_token=token)
    print(info.model_dump_json(indent=2))
    return 0


def _add_model_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """tune, promote, rollback: the commands that make registered versions and move aliases."""
    tune = commands.add_parser(
        "tune",
        help="search hyperparameters on Ray, log to MLflow, register the best model",
        description="Run a Ray Tune search described by a YAML config. Any config field can be"
        " overridden as KEY=VALUE with a dotted key, e.g. search.num_samples=10.",
    )
    tune.add_argument("--config", type=Path, required=True, help="search config (YAML)")
    tune.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    tune.add_argument("--dataset", help="bundled dataset name")
    tune.add_argument("--metric", help="accuracy, f1_macro, roc_auc, r2 or rmse")
    tune.add_argument("--families", help="comma-separated model families (default spaces)")
    tune.add_argument("--cv-folds", type=int)
    tune.add_argument("--num-samples", type=int)
    tune.add_argument("--max-concurrent-trials", type=int)
    tune.add_argument("--cpus-per-trial", type=float)
    tune.add_argument("--algorithm", choices=["random", "grid", "optuna"])
    tune.add_argument("--early-stopping", choices=["asha", "none"])
    tune.add_argument("--register", metavar="NAME", help="registered model name")
    tune.add_argument("--alias", help="alias for the new version (default challenger)")
    tune.add_argument("--experiment", help="MLflow experiment name")
    tune.set_defaults(func=cmd_tune)

    promote = commands.add_parser("promote", help="point an alias at a model version")
    promote.add_argument("name", help="registered model name")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--version", required=True, type=int)
    promote.set_defaults(func=cmd_promote)

    rollback = commands.add_parser(
        "rollback", help="move an alias back to the version that held it before"
    )
    rollback.add_argument("name", help="registered model name")
    rollback.add_argument("--alias", default="champion")
    rollback.set_defaults(func=cmd_rollback)


def _add_cluster_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """up, down: start and stop the local Ray head."""
    up = commands.add_parser("up", help="start a local Ray head ready for serving")
    up.add_argument("--port", type=int, default=DEFAULT_RAY_PORT, help="GCS port (not 6379)")
    up.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    up.add_argument("--metrics-export-port", type=int, default=DEFAULT_METRICS_EXPORT_PORT)
    up.add_argument("--num-cpus", type=int, help="CPUs Ray may use (default: all)")
    up.add_argument(
        "--node-ip-address", default="127.0.0.1", help="address workers reach the head at"
    )
    up.add_argument(
        "--no-fast-path", action="store_true", help="without Ray Serve's HAProxy ingress"
    )
    up.add_argument(
        "--gcs-redis",
        metavar="URL",
        help="turn on Ray's GCS fault tolerance: the GCS keeps the cluster's state in this"
        " Redis (redis://[[USER]:PASSWORD@]HOST[:PORT], rediss:// for TLS; always database"
        " 0, under a key namespace of this RAYSPLIT_HOME), so a gcs_server restarted within"
        " RAY_gcs_rpc_server_reconnect_timeout_s (default 60 s) resumes the cluster while"
        " Serve's replicas keep answering (docs/reliability.md); `raysplit down` deletes"
        " that state",
    )
    up.set_defaults(func=cmd_up)

    down = commands.add_parser(
        "down",
        help="stop the Ray head `raysplit up` started (a no-op if none is running)",
        description="Stop the processes of the Ray cluster `raysplit up` started for this"
        " RAYSPLIT_HOME, and no others. With none running it says so and exits 0, so it is"
        " safe to run before `raysplit up`.",
    )
    down.set_defaults(func=cmd_down)


def _add_deploy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """check, deploy, status: a serve config on its way to the cluster, and what it became.
    They share the dashboard flag, so they are added together."""
    dashboard_help = "Ray dashboard URL (default: the local cluster's, `raysplit info`)"
    for name, func, help_text, description in (
        (
            "check",
            cmd_check,
            "check a serve config against the live registry as a replica would",
            "Validate every raysplit application's user_config in a serve config with the code"
            " a replica runs on deploy (models resolved and loaded from the registry, variants"
            " compared); print each problem with its application, deployment and field. Exit 2"
            " if a replica would refuse it. Warns when the replica maxima need more CPUs than"
            " the cluster has.",
        ),
        (
            "deploy",
            cmd_deploy,
            "raysplit check, then deploy the config as `serve deploy` does",
            "Check the serve config (see `raysplit check`) and, only if every application's"
            " config would be applied, send it to the cluster's dashboard.",
        ),
    ):
        command = commands.add_parser(name, help=help_text, description=description)
        command.add_argument(
            "config", type=Path, help="serve config (YAML), e.g. serve_config.yaml"
        )
        command.add_argument("--address", metavar="URL", help=dashboard_help)
        command.set_defaults(func=func)

    status = commands.add_parser(
        "status",
        help="one line per application: the config applied, or refused and why",
    )
    status.add_argument("--address", metavar="URL", help=dashboard_help)
    status.add_argument("--url", help="ingress URL (default: RAYSPLIT_INGRESS_URL)")
    add_api_key(status, "GET /models")
    status.set_defaults(func=cmd_status)


def _add_experiment_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """traffic, report, rollout: the commands that talk to a running ingress's experiment."""
    traffic = commands.add_parser("traffic", help="send sample predictions, show the split")
    traffic.add_argument("--url", help="ingress URL (default: raysplit info's ingress_url)")
    add_app(traffic)
    traffic.add_argument(
        "--dataset",
        help="bundled dataset to sample rows from (default: the --app name if it is one, else"
        " iris)",
    )
    traffic.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="sample rows and labels from this CSV or Parquet file instead; its columns are"
        " renamed as `raysplit tune` renames them, and it is checked against GET /models",
    )
    traffic.add_argument(
        "--target", metavar="COLUMN", help="with --data: the column holding each row's label"
    )
    traffic.add_argument("--requests", type=int, default=300)
    traffic.add_argument("--users", type=int, default=50, help="distinct sticky user ids")
    traffic.add_argument("--wait", type=float, default=120, help="seconds to wait for /readyz")
    traffic.add_argument(
        "--feedback", action="store_true", help="then send each row's true label as feedback"
    )
    traffic.add_argument(
        "--until-rollout-ends",
        action="store_true",
        help="repeat: --requests predictions with feedback, until the deployed rollout is"
        " promoted or rolled back; prints each decision that moves it",
    )
    traffic.add_argument(
        "--timeout", type=float, default=600, help="seconds --until-rollout-ends may take"
    )
    add_api_key(traffic, "predict scope; admin with --feedback or --until-rollout-ends")
    traffic.set_defaults(func=cmd_traffic)

    report = commands.add_parser("report", help="print the A/B experiment report")
    report.add_argument("--experiment", help="experiment name (default: the deployed one)")
    report.add_argument("--url", help="ingress URL (default: raysplit info's ingress_url)")
    add_app(report)
    report.add_argument("--json", action="store_true", help="the raw JSON of GET /experiment")
    report.add_argument(
        "--mlflow",
        action="store_true",
        help="also log the report as an MLflow run (metrics, verdicts, the JSON) and tag the"
        " model versions it compared with that run",
    )
    add_api_key(report, "admin scope")
    report.set_defaults(func=cmd_report)

    rollout = commands.add_parser(
        "rollout",
        help="the running rollout: status, or pause | resume | abort | promote it",
        description="Show or steer the rollout of the deployed user_config (docs/rollouts.md)."
        " abort sends the candidate's share to 0 at once; promote ends it as a success now.",
    )
    rollout.add_argument(
        "action", choices=["status", "pause", "resume", "abort", "promote"], help="what to do"
    )
    rollout.add_argument("--url", help="ingress URL (default: raysplit info's ingress_url)")
    rollout.add_argument("--json", action="store_true", help="the raw JSON of GET /rollout")
    add_api_key(rollout, "admin scope")
    rollout.set_defaults(func=cmd_rollout)


def _add_retrain_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """retrain: the experiment's feedback back into a search, as a Ray job."""
    retrain = commands.add_parser(
        "retrain",
        help="retrain from production feedback as a Ray job on the running cluster",
        description="Submit a tune config whose dataset is dataset.events (labelled production"
        " predictions) as a Ray job; the new version takes register.alias only if it beats"
        " register.gate's aliases on the newest events (docs/retraining.md).",
    )
    retrain.add_argument("--config", type=Path, help="tune config (YAML) with dataset.events")
    retrain.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    retrain.add_argument("--status", metavar="JOB_ID", help="show a retrain job's state")
    retrain.add_argument("--wait", action="store_true", help="wait for the job and show it")
    retrain.add_argument("--json", action="store_true", help="--status as JSON")
    retrain.add_argument("--address", help="Ray dashboard URL (default: the local cluster's)")
    retrain.set_defaults(func=cmd_retrain)


def _add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """keys new, keys list: minting API keys offline and asking the ingress about its own."""
    keys = commands.add_parser("keys", help="API keys for the ingress (see docs/security.md)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_new = keys_commands.add_parser(
        "new",
        help="mint an API key: print it once with the hashed entry to configure",
        description="Mint a random API key. The key is printed once; the ingress is given only"
        " the entry (scope and sha256 of the key) through RAYSPLIT_API_KEYS or the file named"
        " by RAYSPLIT_API_KEYS_FILE.",
    )
    keys_new.add_argument(
        "--scope",
        required=True,
        choices=["predict", "admin"],
        help="predict: /predict and /v2/models/*; admin: every route",
    )
    keys_new.add_argument(
        "--name",
        help="what the audit trail calls the key (decision log, log lines, keys list);"
        " default: the first 8 hex digits of its hash",
    )
    keys_new.add_argument(
        "--expires",
        metavar="WHEN",
        help="ISO 8601 date or time after which the key is refused, e.g. 2027-01-31 (UTC)",
    )
    keys_new.add_argument("--json", action="store_true", help='print {"key": ..., "entry": ...}')
    keys_new.set_defaults(func=cmd_keys_new)
    keys_list = keys_commands.add_parser(
        "list",
        help="the keys the ingress holds: name, scope, expiry, last use, refusals",
        description="Ask the ingress (GET /keys, admin scope) which keys its replicas hold and"
        " when each was last used.",
    )
    keys_list.add_argument("--url", help="ingress URL (default: RAYSPLIT_INGRESS_URL)")
    keys_list.add_argument("--json", action="store_true", help="print GET /keys as JSON")
    add_api_key(keys_list, "admin")
    keys_list.set_defaults(func=cmd_keys_list)


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag. The helpers run in the order the commands are listed in
    ``raysplit --help``, which is the order they are added in."""
    parser = argparse.ArgumentParser(
        prog="raysplit", description="Tune, register and A/B-serve scikit-learn models on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_model_commands(commands)
    _add_cluster_commands(commands)
    _add_deploy_commands(commands)
    _add_experiment_commands(commands)
    _add_retrain_command(commands)
    add_lake_commands(commands)
    add_experiments_commands(commands)
    _add_key_commands(commands)
    info = commands.add_parser("info", help="print the resolved locations as JSON")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if TOKEN_PATH.exists():
        # Ray reads this once, at import: with a token on disk, join clusters with it
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except RaysplitError as exc:
        print(f"raysplit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysplit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`raysplit report | head`): end quietly, as Unix tools do;
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
