"""Embedded Unicode fonts for the PDF report, chosen per character run.

ReportLab's base-14 fonts cover Latin-1 only: Greek, Cyrillic, Hebrew, Arabic and CJK names came
out as black boxes. The report now embeds DejaVu Sans (Latin, Greek, Cyrillic, Hebrew, Arabic;
Debian ``fonts-dejavu-core`` or the copy matplotlib ships) and, for what DejaVu lacks (CJK), Droid
Sans Fallback (Debian ``fonts-droid-fallback``, Apache 2.0). Text is split into runs by which font
has the glyph, and right-to-left runs are put in visual order (python-bidi), so a PDF reader and
``pdftotext`` give back the name exactly as stored. Arabic letters are drawn in their isolated
forms: ReportLab shapes only with uharfbuzz, and shaped glyphs would no longer extract as text.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

from bidi import get_display
from reportlab.lib.fonts import addMapping
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

log = logging.getLogger(__name__)

SANS = "PacsnodeSans"
SANS_BOLD = "PacsnodeSans-Bold"
FALLBACK = "PacsnodeFallback"
_SYSTEM_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/truetype/droid"),
    Path("/usr/local/share/fonts"),
)


def _font_dirs() -> list[Path]:
    dirs = list(_SYSTEM_DIRS)
    spec = importlib.util.find_spec("matplotlib")  # ships DejaVu Sans (pip-installable)
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    return dirs


def find_font(file_name: str) -> Path | None:
    for folder in _font_dirs():
        if (folder / file_name).is_file():
            return folder / file_name
    return None


@dataclass(frozen=True)
class ReportFonts:
    """Registered font names: ``regular``/``bold`` always exist; ``fallback`` when found."""

    regular: str
    bold: str
    fallback: str | None

    def covers(self, name: str, char: str) -> bool:
        if name in ("Helvetica", "Helvetica-Bold"):
            return ord(char) < 256
        face = pdfmetrics.getFont(name).face  # type: ignore[attr-defined]
        return ord(char) in face.charToGlyph

    def font_for(self, char: str, base: str) -> str:
        if char.isspace() or self.covers(base, char) or self.fallback is None:
            return base
        return self.fallback if self.covers(self.fallback, char) else base


@lru_cache(maxsize=1)
def report_fonts() -> ReportFonts:
    """Register the fonts once per process; base-14 Helvetica (Latin-1) if DejaVu is missing."""
    regular, bold = find_font("DejaVuSans.ttf"), find_font("DejaVuSans-Bold.ttf")
    if regular is None or bold is None:
        log.warning("DejaVu Sans not found (apt install fonts-dejavu-core); PDF is Latin-1 only")
        return ReportFonts("Helvetica", "Helvetica-Bold", None)
    pdfmetrics.registerFont(TTFont(SANS, str(regular)))
    pdfmetrics.registerFont(TTFont(SANS_BOLD, str(bold)))
    addMapping(SANS, 0, 0, SANS)
    addMapping(SANS, 1, 0, SANS_BOLD)
    addMapping(SANS, 0, 1, SANS)
    addMapping(SANS, 1, 1, SANS_BOLD)
    fallback = find_font("DroidSansFallbackFull.ttf")
    if fallback is None:
        log.warning("no CJK font (apt install fonts-droid-fallback); CJK text will not render")
        return ReportFonts(SANS, SANS_BOLD, None)
    pdfmetrics.registerFont(TTFont(FALLBACK, str(fallback)))
    return ReportFonts(SANS, SANS_BOLD, FALLBACK)


def _is_rtl(text: str) -> bool:
    return any("\u0590" <= c <= "\u08ff" or "\ufb1d" <= c <= "\ufeff" for c in text)


def markup(text: str, bold: bool = False) -> str:
    """Paragraph markup for ``text``: escaped, in visual order, each run in a font that has it."""
    fonts = report_fonts()
    base = fonts.bold if bold else fonts.regular
    shown = get_display(text) if _is_rtl(text) else text
    runs: list[tuple[str, str]] = []
    for char in shown:
        name = fonts.font_for(char, base)
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + char)
        else:
            runs.append((name, char))
    return "".join(
        escape(chunk) if name == base else f'<font name="{name}">{escape(chunk)}</font>'
        for name, chunk in runs
    )
