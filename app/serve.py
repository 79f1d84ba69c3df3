"""``pacsnode serve``: every stage and the web console in one process (what ``make run`` starts)."""

from __future__ import annotations

import argparse
import logging

from app.console import serve_web
from app.runtime import ALL_STAGES, Node, remember_signals
from app.worker import build_worker
from core.config import Settings
from models.devices import available_devices

log = logging.getLogger(__name__)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    node = Node(settings, ALL_STAGES, build_worker=build_worker, devices=available_devices())
    remember_signals(node.stop_event)  # before start: a SIGTERM during start-up counts
    try:
        node.start()
        if node.stop_event.is_set():
            log.info("stopped while starting; the web console is not started")
            return 0
        log.info("web console on http://%s:%s", settings.web_host, settings.web_port)
        serve_web(settings, node.db, node.stop_event)
    finally:
        node.stop()
    return 0
