"""``pacsnode serve``: every stage and the web console in one process (what ``make run`` starts)."""

from __future__ import annotations

import argparse
import logging

from app.console import serve_web
from app.runtime import ALL_STAGES, Node, remember_signals
from app.worker import build_worker
from core.config import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    node = Node(settings, ALL_STAGES, build_worker=build_worker)
    remember_signals(node.stop_event)
    node.start()
    log.info("web console on http://%s:%s", settings.web_host, settings.web_port)
    try:
        serve_web(settings, node.db)
    finally:
        node.stop()
    return 0
