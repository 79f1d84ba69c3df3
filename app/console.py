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


def web_server_config(settings: Settings, db: Database) -> uvicorn.Config:
    """How the console is served: uvicorn over ``create_app``, with its own proxy-header handling
    off. The app honours X-Forwarded-For itself, and only from ``web.trusted_proxies``; uvicorn's
    would trust 127.0.0.1 (or $FORWARDED_ALLOW_IPS) whatever the settings say."""
    return uvicorn.Config(
        create_app(settings, db),
        host=settings.web_host,
        port=settings.web_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )


def serve_web(settings: Settings, db: Database, stop: threading.Event | None = None) -> None:
    """Serve the console until uvicorn's own SIGTERM/SIGINT handling or ``stop`` ends it."""
    server = uvicorn.Server(web_server_config(settings, db))
    if stop is not None:

        def follow_stop() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=follow_stop, name="web-stop", daemon=True).start()
    server.run()


def run_web(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    remember_signals(stop)
    serve_web(settings, open_database(settings), stop)
    return 0
