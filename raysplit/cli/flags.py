"""Flags several command modules share: each module adds its own commands, and none
imports the entry point (main) that registers them."""

from __future__ import annotations

import argparse
import os

API_KEY_ENV = "RAYSPLIT_API_KEY"  # the client's key; the ingress's hashes: RAYSPLIT_API_KEYS


def add_api_key(parser: argparse.ArgumentParser, scope: str) -> None:
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        metavar="KEY",
        help=f"API key for an ingress with keys on ({scope}), sent as Authorization: Bearer."
        f" Default: ${API_KEY_ENV}, which unlike the flag stays out of the process list",
    )


def add_app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        metavar="NAME",
        help="Serve application to address (e.g. diabetes): its route prefix, from the"
        " ingress's route table, is added to the URL (default: the application at the URL)",
    )
