"""Orthanc Python plugin: tell pacsnode when a study is stable (``POST /api/hooks/orthanc``).

Loaded by Orthanc's Python plugin (``"PythonScript"`` in orthanc.json). The change callback runs on
Orthanc's own thread, so it only puts the study ID on a queue; a daemon thread does the HTTP post,
with retries and backoff. Nothing heavy ever runs inside Orthanc. If every retry fails, the node's
polling fallback (``orthanc_sources[].poll``) still finds the study in ``/changes``.

Configuration: environment ``PACSNODE_HOOK_URL`` / ``PACSNODE_HOOK_SECRET`` (docker-compose), else
the ``"Pacsnode": {"HookUrl": ..., "HookSecret": ..., "OrthancUrl": ...}`` section of orthanc.json.
Instead of the shared secret, an API token with the ``hooks`` scope may be given
(``PACSNODE_HOOK_TOKEN`` / ``"HookToken"``); it is sent as ``Authorization: Bearer``.
``OrthancUrl`` (optional) is how the node reaches this Orthanc, for a node with several sources.
"""

import json
import os
import queue
import threading
import urllib.error
import urllib.request

import orthanc  # the plugin's own module, only importable inside Orthanc

MAX_TRIES = 8
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
TIMEOUT_S = 10.0

_studies = queue.Queue()
_stop = threading.Event()


def _settings():
    section = json.loads(orthanc.GetConfiguration()).get("Pacsnode", {})
    return {
        "url": os.environ.get("PACSNODE_HOOK_URL") or section.get("HookUrl", ""),
        "secret": os.environ.get("PACSNODE_HOOK_SECRET") or section.get("HookSecret", ""),
        "token": os.environ.get("PACSNODE_HOOK_TOKEN") or section.get("HookToken", ""),
        "orthanc_url": os.environ.get("PACSNODE_ORTHANC_URL") or section.get("OrthancUrl", ""),
    }


SETTINGS = _settings()


def _post(study_id):
    """One attempt; returns (done, detail). A 4xx answer will not get better by retrying."""
    body = {"study_id": study_id}
    if SETTINGS["orthanc_url"]:
        body["orthanc_url"] = SETTINGS["orthanc_url"]
    headers = {"Content-Type": "application/json"}
    if SETTINGS["token"]:
        headers["Authorization"] = f"Bearer {SETTINGS['token']}"
    else:
        headers["X-Pacsnode-Hook-Secret"] = SETTINGS["secret"]
    request = urllib.request.Request(
        SETTINGS["url"], data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return 400 <= exc.code < 500, f"HTTP {exc.code} {exc.read()[:200]!r}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def _announce(study_id):
    for attempt in range(1, MAX_TRIES + 1):
        done, detail = _post(study_id)
        if done:
            if detail.startswith("HTTP 2"):
                orthanc.LogInfo(f"pacsnode: announced study {study_id} ({detail})")
            else:
                orthanc.LogError(f"pacsnode: hook refused study {study_id}: {detail}")
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        orthanc.LogWarning(
            f"pacsnode: hook attempt {attempt} for {study_id} failed ({detail}); retry in {delay:.0f}s"
        )
        if _stop.wait(delay):
            return
    orthanc.LogError(
        f"pacsnode: giving up announcing {study_id}; the node's /changes polling will find it"
    )


def _worker():
    while not _stop.is_set():
        try:
            study_id = _studies.get(timeout=1.0)
        except queue.Empty:
            continue
        _announce(study_id)


def OnChange(change_type, level, resource_id):  # noqa: N802 - Orthanc's callback naming
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        _studies.put(resource_id)  # never block Orthanc's thread
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _stop.set()


if SETTINGS["url"]:
    threading.Thread(target=_worker, name="pacsnode-hook", daemon=True).start()
    orthanc.RegisterOnChangeCallback(OnChange)
    orthanc.LogWarning(f"pacsnode: stable studies will be announced to {SETTINGS['url']}")
else:
    orthanc.LogWarning("pacsnode: no HookUrl configured; the hook is off")
