"""`raysplit experiments list | archive NAME | delete NAME`: what the event store holds per
experiment, and its removal (docs/removal.md).

The store side is :mod:`raysplit.eventstore.removal`; this module adds what only the
command line knows: which experiment the running cluster serves (asked of the ingress,
``GET /models`` of each application in Serve's route table), the confirmation, and the
text. Deleting what is being served would leave replicas writing into an experiment that
has lost its allocations and rollups, so it is refused unless ``--force``; when the
ingress cannot say (down, or refusing the key), that is refused too, for the same reason.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import BaseModel

from raysplit.cli.flags import add_api_key
from raysplit.core.errors import RaysplitError
from raysplit.core.settings import Locations

INGRESS_TIMEOUT_S = 5.0
COLUMNS = ("experiment", "first", "last", "predictions", "labelled", "archived", "serving")


class Serving(BaseModel):
    """Which experiments the cluster's raysplit applications serve, if the ingress said."""

    ingress: str
    known: bool
    experiments: dict[str, str] = {}  # experiment -> the application serving it
    reason: str | None = None  # why it is not known


class ListedExperiment(BaseModel):
    experiment: str
    first_at: float | None
    last_at: float | None
    predictions: int
    labelled: int
    archived: bool
    serving: bool | None  # None: the ingress did not say


class ExperimentsView(BaseModel):
    """`raysplit experiments list --json`."""

    store: str  # password hidden
    ingress: str
    serving_known: bool
    serving_reason: str | None
    experiments: list[ListedExperiment]


def _headers(api_key: str | None) -> dict[str, str]:
    from raysplit.cli.traffic import auth_headers

    return auth_headers(api_key)


def served_experiments(url: str, api_key: str | None) -> Serving:
    """Ask the ingress which experiment each application serves: Serve's route table
    (``GET /-/routes``, answered without a key), then ``GET /models`` per route prefix.
    An application that is not raysplit's (404) serves none; one that refuses the key or
    fails leaves the answer unknown."""
    import requests

    from raysplit.cli.traffic import refusal

    url = url.rstrip("/")
    try:
        answer = requests.get(f"{url}/-/routes", timeout=INGRESS_TIMEOUT_S)
        routes = answer.json() if answer.ok else None
    except requests.RequestException as exc:
        return Serving(
            ingress=url,
            known=False,
            reason=f"the ingress at {url} is unreachable ({type(exc).__name__})",
        )
    except ValueError:
        routes = None
    if not isinstance(routes, dict):
        routes = {"/": "the application at the URL"}  # no route table: ask the URL itself
    served: dict[str, str] = {}
    for prefix, app in sorted(routes.items()):
        try:
            response = requests.get(
                f"{url}{prefix.rstrip('/')}/models",
                headers=_headers(api_key),
                timeout=INGRESS_TIMEOUT_S,
            )
        except requests.RequestException as exc:
            reason = f"application {app} at {url}{prefix} did not answer ({type(exc).__name__})"
            return Serving(ingress=url, known=False, reason=reason)
        if response.status_code == 404:
            continue  # not a raysplit application
        if not response.ok:
            return Serving(ingress=url, known=False, reason=str(refusal(response)))
        try:
            experiment = response.json().get("experiment")
        except (ValueError, AttributeError):
            continue
        if experiment:
            served[experiment] = str(app)
    return Serving(ingress=url, known=True, experiments=served)


def _store(args: argparse.Namespace) -> str:
    return args.store or Locations.resolve().event_store_url


def _ingress(args: argparse.Namespace) -> str:
    return args.url or Locations.resolve().ingress_url


def _unknown(store: str, experiment: str) -> RaysplitError:
    """An experiment the store does not hold, naming the ones it does (a typo is likely)."""
    from raysplit.eventstore.labelled import redact_url
    from raysplit.eventstore.removal import list_experiments

    names = [e.experiment for e in list_experiments(store)]
    holds = f"it holds: {', '.join(names)}" if names else "it holds no experiment"
    return RaysplitError(
        f"event store {redact_url(store)} holds no experiment '{experiment}'; {holds}"
    )


def _when(at: float | None) -> str:
    from raysplit.eventstore.labelled import iso_time

    return "-" if at is None else iso_time(at)


def _print_table(view: ExperimentsView) -> None:
    rows = [
        [
            e.experiment,
            _when(e.first_at),
            _when(e.last_at),
            str(e.predictions),
            str(e.labelled),
            "yes" if e.archived else "",
            {True: "yes", False: "", None: "?"}[e.serving],
        ]
        for e in view.experiments
    ]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    count = len(rows)
    print(f"{count} experiment{'' if count == 1 else 's'} in {view.store}")
    if not view.serving_known:
        print(f"which one is served is unknown: {view.serving_reason}")


def cmd_list(args: argparse.Namespace) -> int:
    from raysplit.eventstore.labelled import redact_url
    from raysplit.eventstore.removal import list_experiments

    store = _store(args)
    held = list_experiments(store)
    serving = served_experiments(_ingress(args), args.api_key)
    view = ExperimentsView(
        store=redact_url(store),
        ingress=serving.ingress,
        serving_known=serving.known,
        serving_reason=serving.reason,
        experiments=[
            ListedExperiment(
                **e.model_dump(),
                serving=(e.experiment in serving.experiments) if serving.known else None,
            )
            for e in held
        ],
    )
    if args.json:
        print(view.model_dump_json(indent=2))
    else:
        _print_table(view)
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from raysplit.eventstore.labelled import iso_time
    from raysplit.eventstore.removal import archive_experiment, holdings, known

    store = _store(args)
    if not known(holdings(store, args.name)):
        raise _unknown(store, args.name)
    since = archive_experiment(store, args.name)
    print(
        f"experiment '{args.name}' is archived (since {iso_time(since)}): it is off the results"
        " page's list (GET /experiments); its rows stay and its report is read by name:"
        f" raysplit report --experiment {args.name}"
    )
    return 0


def _check_not_served(args: argparse.Namespace) -> None:
    """Refuse to delete what the cluster serves now, or when the ingress cannot say,
    unless ``--force``."""
    serving = served_experiments(_ingress(args), args.api_key)
    if not serving.known:
        if args.force:
            print(f"warning: {serving.reason}; deleting anyway (--force)", file=sys.stderr)
            return
        raise RaysplitError(
            f"cannot tell whether experiment '{args.name}' is being served: {serving.reason};"
            " pass --url/--api-key for the ingress, or --force to delete it anyway"
        )
    app = serving.experiments.get(args.name)
    if app is None:
        return
    if args.force:
        print(
            f"warning: application {app} serves experiment '{args.name}' now; its replicas"
            " keep writing rows into it (--force)",
            file=sys.stderr,
        )
        return
    raise RaysplitError(
        f"experiment '{args.name}' is being served now by application {app} at"
        f" {serving.ingress}: deploy another experiment first, or pass --force"
    )


def _confirm(args: argparse.Namespace, summary: str) -> None:
    """Ask for the experiment's name back, unless ``--yes``; never wait for an answer
    nobody can give (stdin is not a terminal: a script, CI)."""
    if args.yes:
        return
    try:
        interactive = sys.stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        raise RaysplitError(
            f"not deleting experiment '{args.name}' without confirmation, and stdin is not a"
            " terminal to ask on: pass --yes"
        )
    print(summary)
    answer = input(f"type the experiment's name ({args.name}) to delete it: ")
    if answer.strip() != args.name:
        raise RaysplitError(f"not confirmed: experiment '{args.name}' was not deleted")


def cmd_delete(args: argparse.Namespace) -> int:
    from raysplit.eventstore.labelled import redact_url
    from raysplit.eventstore.removal import delete_experiment, holdings, known

    store = _store(args)
    held = holdings(store, args.name)
    if not known(held):
        raise _unknown(store, args.name)
    _check_not_served(args)
    rows = ", ".join(f"{table} {n}" for table, n in held.items())
    _confirm(args, f"experiment '{args.name}' in {redact_url(store)} holds rows: {rows}")
    counts = delete_experiment(store, args.name)
    deleted = ", ".join(f"{table} {n}" for table, n in counts.rows.items() if n) or "no rows"
    print(
        f"deleted experiment '{args.name}' from {redact_url(store)} in {counts.batches}"
        f" batches: {deleted}"
    )
    return 0


def add_experiments_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """experiments list | archive | delete: the event store's experiments and their
    removal."""

    group = commands.add_parser(
        "experiments",
        help="the experiments the event store holds: list, archive or delete one",
        description="List the event store's experiments, archive one (off the results"
        " page's list, its report still readable by name) or delete every row of one"
        " (docs/removal.md).",
    )
    actions = group.add_subparsers(dest="experiments_command", required=True)

    def common(parser: argparse.ArgumentParser, ingress: bool) -> None:
        parser.add_argument(
            "--store", metavar="URL", help="event store (default: RAYSPLIT_EVENT_STORE_URL)"
        )
        if ingress:
            parser.add_argument(
                "--url",
                help="ingress URL, asked which experiment is served (default:"
                " raysplit info's ingress_url)",
            )
            add_api_key(parser, "admin scope, for GET /models")

    listing = actions.add_parser(
        "list",
        help="every experiment: first/last prediction, predictions, labelled, archived, served",
        description="One line per experiment in the event store. Times are to the minute"
        " (the rollup's); counts are live requests, pruned ones included. Which experiment"
        " is served comes from the ingress (GET /models), '?' when it cannot say.",
    )
    common(listing, ingress=True)
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=cmd_list)

    archive = actions.add_parser(
        "archive",
        help="take an experiment off the results page's list; its rows and report stay",
    )
    archive.add_argument("name", help="experiment name")
    common(archive, ingress=False)
    archive.set_defaults(func=cmd_archive)

    delete = actions.add_parser(
        "delete",
        help="delete every row of an experiment from the event store, in batches",
        description="Delete the experiment's predictions (every day partition), their"
        " feedback, rollups, allocations, rollout state and log, and leases, in batches."
        " Refuses the experiment the cluster serves now, or any when the ingress cannot"
        " say, unless --force. A delete that stops midway is finished by running it again.",
    )
    delete.add_argument("name", help="experiment name")
    common(delete, ingress=True)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "--force",
        action="store_true",
        help="delete even if it is being served, or the ingress cannot say",
    )
    delete.set_defaults(func=cmd_delete)
