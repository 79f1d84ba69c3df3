"""``pacsnode`` / ``python -m app``: every entry point of the node behind one ``main(argv=None)``.

Each sub-command imports its implementation lazily, so ``pacsnode receiver`` does not pay for
PyTorch and ``pacsnode models list`` does not open a DICOM port. Every command validates the
settings first: a bad configuration exits with status 2 and a message naming the key.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.config import ConfigError, Settings, load_settings

log = logging.getLogger("pacsnode")

# command path -> "module:function"; each function takes (settings, args) and returns an exit code
COMMANDS: dict[str, str] = {
    "serve": "app.serve:serve",
    "receiver": "app.runtime:run_receiver",
    "worker": "app.worker:run_worker",
    "dispatcher": "app.runtime:run_dispatcher",
    "scheduler": "app.runtime:run_scheduler",
    "web": "app.console:run_web",
    "db upgrade": "app.runtime:db_upgrade",
    "import": "app.commands.ingest:import_command",
    "study complete": "app.commands.study:complete_study_command",
    "study list": "app.commands.study:list_studies_command",
    "route": "app.commands.study:route_command",
    "models list": "app.commands.models:list_command",
    "models check": "app.commands.models:check_command",
    "train": "app.commands.training:train_command",
    "evaluate": "app.commands.training:evaluate_command",
    "user create": "app.commands.users:create_user_command",
    "user reset-link": "app.commands.users:reset_link_command",
    "user unlock": "app.commands.users:unlock_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacsnode", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML settings file (also PACSNODE_CONFIG)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: setting)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="every stage in one process (embedded default)")
    for stage in ("receiver", "worker", "dispatcher", "scheduler", "web"):
        p = sub.add_parser(stage, help=f"run the {stage} stage alone against the shared database")
        if stage == "worker":
            p.add_argument("--worker-id", help="lease owner name (default: host:pid:thread)")
            p.add_argument(
                "--engine",
                choices=["local", "celery"],
                help="job engine (default: setting jobs.engine)",
            )
            p.add_argument(
                "--queues",
                help="comma-separated queues (device classes) to take, e.g. gpu,cpu"
                " (celery default: cpu; local default: every pipeline)",
            )
            p.add_argument(
                "-n",
                "--hostname",
                dest="node_name",
                help="celery node name, e.g. w1@hostA (default: worker<pid>@<host>)",
            )
            p.add_argument(
                "--concurrency", type=int, default=1, help="celery jobs at once (default 1)"
            )
        if stage == "dispatcher":
            p.add_argument(
                "--engine",
                choices=["local", "celery"],
                help="local: poll the database; celery: consume the delivery queue"
                " (dispatch.queue) from the broker (default: setting jobs.engine)",
            )
            p.add_argument(
                "-n",
                "--hostname",
                dest="node_name",
                help="celery node name, e.g. d1@hostA (default: worker<pid>@<host>)",
            )
            p.add_argument(
                "--concurrency",
                type=int,
                default=4,
                help="celery: destinations sent to at once (default 4)",
            )
    db = sub.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_cmd", required=True
    )
    db.add_parser("upgrade", help="apply migrations")

    imp = sub.add_parser("import", help="import DICOM files, folders or zip archives")
    imp.add_argument("paths", nargs="+")

    study = sub.add_parser("study", help="study operations").add_subparsers(
        dest="study_cmd", required=True
    )
    complete = study.add_parser("complete", help="force a study complete now")
    complete.add_argument("study_uid")
    study.add_parser("list", help="list studies and their states")

    route = sub.add_parser("route", help="show which routing rule matches a study and why")
    route.add_argument("--study", required=True, dest="study_uid")

    models = sub.add_parser("models", help="AI models").add_subparsers(
        dest="models_cmd", required=True
    )
    models.add_parser("list", help="model cards found, with SHA-256 and device")
    check = models.add_parser("check", help="load every model on its device and report")
    check.add_argument("--strict", action="store_true", help="exit 1 when a model fails to load")

    train = sub.add_parser("train", help="train the demo models on procedural phantoms")
    train.add_argument(
        "--only",
        choices=["segmentation", "classification", "detection", "anomaly", "enhancement"],
    )
    train.add_argument("--seed", type=int, default=1234)
    train.add_argument("--out", help="models directory to write (default: setting)")
    train.add_argument("--quick", action="store_true", help="tiny run for tests")
    evaluate = sub.add_parser("evaluate", help="score models and ensembles on held-out phantoms")
    evaluate.add_argument("--write-cards", action="store_true")
    evaluate.add_argument("--seed", type=int, default=999)
    evaluate.add_argument(
        "--only",
        choices=[
            "segmentation",
            "segmentation_3d",
            "classification",
            "detection",
            "anomaly",
            "enhancement",
        ],
        help="evaluate one task's models only",
    )

    user = sub.add_parser("user", help="console users").add_subparsers(
        dest="user_cmd", required=True
    )
    create = user.add_parser("create", help="create a user (prints a generated password)")
    create.add_argument("username")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--role", choices=["admin", "radiologist", "viewer"], default="viewer")
    create.add_argument("--email", default="")
    reset = user.add_parser("reset-link", help="print a password reset link for a user")
    reset.add_argument("username")
    unlock = user.add_parser("unlock", help="forget a user's failed logins (no more login delay)")
    unlock.add_argument("username")
    return parser


def _command_key(args: argparse.Namespace) -> str:
    for attr in ("db_cmd", "study_cmd", "models_cmd", "user_cmd"):
        value = getattr(args, attr, None)
        if value:
            return f"{args.command} {value}"
    return str(args.command)


def resolve(key: str) -> Callable[[Settings, argparse.Namespace], int]:
    module_name, func_name = COMMANDS[key].split(":")
    func: Any = getattr(importlib.import_module(module_name), func_name)
    return func  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"pacsnode: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # APScheduler logs every run of every periodic job at INFO: noise that hides the node's own log.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return int(resolve(_command_key(args))(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
