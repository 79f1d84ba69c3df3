"""Server-side SVG charts: parseable, one bar per value, heights proportional, empty says so."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from web.charts import bar_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_bars_match_data() -> None:
    svg = ET.fromstring(str(bar_chart("Classes", [("a<b", 2), ("c", 4), ("d", 0)])))
    bars = svg.findall(f"{SVG}rect")
    assert [b.get("data-label") for b in bars] == ["a<b", "c", "d"]
    heights = [float(b.get("height", 0)) for b in bars]
    assert heights[1] == 2 * heights[0] and heights[2] == 0


def test_empty_chart_says_no_data() -> None:
    assert "no data yet" in str(bar_chart("Nothing", []))
    assert "no data yet" in str(bar_chart("Zeros", [("x", 0)]))
