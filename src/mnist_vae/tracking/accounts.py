"""The team's accounts on an MLflow server run with its basic-auth app (README: Shared
tracking): who may train (create runs, register versions, move the champion alias) and who
may only look, on the project's experiment and registered model.

    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\
        python -m mnist_vae.tracking.accounts --tracking-uri https://mlflow.example.org \\
        --trainer alice --viewer bob --out accounts.json

Run as the server's admin. Each new account gets a random password, written to ``--out``
(readable by its owner only) and never printed: hand each one to its user, who puts it in
``~/.mlflow/credentials`` or ``MLFLOW_TRACKING_PASSWORD``. The server should give everyone
else nothing (``default_permission = NO_PERMISSIONS`` in its auth config).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.server.auth.permissions import (
    RESOURCE_TYPE_EXPERIMENT,
    RESOURCE_TYPE_REGISTERED_MODEL,
)

from .runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, EXPERIMENT_NAME, REGISTERED_MODEL

# What each kind of account may do on the experiment and on the registered model. EDIT lets
# a trainer create runs, log to them, register versions and set aliases; READ only reads.
ROLES = {"trainer": "EDIT", "viewer": "READ"}


def project_resources(tracking_uri: str) -> str:
    """Create the project's experiment and registered model if the server lacks them (so
    their permissions can be granted before anyone trains); return the experiment's id."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        experiment_id = client.create_experiment(
            EXPERIMENT_NAME, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    else:
        experiment_id = experiment.experiment_id
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return experiment_id


def create_account(tracking_uri: str, username: str, role: str, experiment_id: str) -> str:
    """A new user with ``role``'s permission on the project's experiment and registered
    model; returns the generated password."""
    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    password = secrets.token_urlsafe(24)
    auth.create_user(username, password)
    for resource_type, resource_id in (
        (RESOURCE_TYPE_EXPERIMENT, experiment_id),
        (RESOURCE_TYPE_REGISTERED_MODEL, REGISTERED_MODEL),
    ):
        auth.grant_user_permission(username, resource_type, resource_id, ROLES[role])
    return password


def write_private(path: Path, accounts: dict[str, dict[str, str]]) -> None:
    """JSON readable by its owner only (created with mode 600, never world-readable)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(accounts, file, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_vae.tracking.accounts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    for role in ROLES:
        parser.add_argument(f"--{role}", action="append", default=[], metavar="USERNAME")
    parser.add_argument("--out", type=Path, required=True, help="where the passwords go (new)")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("give --tracking-uri or set MLFLOW_TRACKING_URI")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new file")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if not os.environ.get(variable):
            parser.error(f"set {variable} to the server's admin account")
    try:
        experiment_id = project_resources(args.tracking_uri)
        accounts = {
            name: {"role": role, "password": create_account(
                args.tracking_uri, name, role, experiment_id
            )}
            for role in ROLES
            for name in getattr(args, role)
        }  # fmt: skip
    except MlflowException as error:
        print(f"accounts: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    write_private(args.out, accounts)
    made = ", ".join(f"{a['role']} {name}" for name, a in accounts.items()) or "no accounts"
    print(f"accounts: {made} on {args.tracking_uri}; passwords in {args.out} (mode 600)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
