"""``pacsnode web``: the console and JSON API served by uvicorn over the node's database.

Apart from :mod:`app.runtime` so that headless stages never import the web stack, and apart from
:mod:`app.serve` so that a web-only process never imports PyTorch.
"""

from __future__ import annotations

import argparse
import threading

import uvicorn

from app.runtime import remember_signals
from core.config import Settings
from node.db.engine import Database, open_database
from web.main import create_app


def serve_web(settings: Settings, db: Database) -> None:
    """Serve the console until SIGTERM/SIGINT (uvicorn's own handlers end ``run``)."""
    config = uvicorn.Config(
        create_app(settings, db),
        host=settings.web_host,
        port=settings.web_port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )
    uvicorn.Server(config).run()


def run_web(settings: Settings, args: argparse.Namespace) -> int:
    remember_signals(threading.Event())
    serve_web(settings, open_database(settings))
    return 0
