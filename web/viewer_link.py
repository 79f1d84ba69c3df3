"""The "Open in viewer" link of the study and review pages (``web.viewer_base_url`` +
``web.viewer_url_template``, OHIF's ``/viewer?StudyInstanceUIDs={study}`` by default)."""

from __future__ import annotations

from urllib.parse import quote

from core.config import WebSettings


def viewer_url(study_uid: str, web: WebSettings) -> str:
    """The study's URL in the configured viewer; "" (no link) without a base URL or template.
    The UID is percent-encoded: a peer-sent UID must not add query parameters to the link."""
    if not web.viewer_base_url or not web.viewer_url_template or not study_uid:
        return ""
    path = web.viewer_url_template.format(study=quote(study_uid, safe=""))
    return web.viewer_base_url.rstrip("/") + path
