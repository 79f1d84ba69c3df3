"""A pydicom decoder plugin for sequential JPEG (baseline / 12-bit Extended) with a bad scan header.

Some modalities write sequential DCT JPEG whose Start Of Scan segment carries the spectral
selection of a progressive scan (``Ss``/``Se`` not ``0``/``63``, or a non-zero successive
approximation ``Ah``/``Al``). For a sequential frame those fields have exactly one legal value
(ITU-T T.81 B.2.3), so the IJG library under DCMTK's ``dcmdjpeg`` warns ("Invalid SOS parameters
for sequential JPEG") and decodes as if they had it. libjpeg (pylibjpeg) refuses the frame, GDCM
and Pillow do not do 12-bit at all, so such a file (pydicom-data's ``JPEG-lossy.dcm``, NM, 12-bit
JPEG Extended ``1.2.840.10008.1.2.4.51``) would be an undecodable input.

This plugin is registered *after* pydicom's own plugins for the two sequential JPEG syntaxes: a
well-formed stream never reaches it. When the others failed it rewrites the scan headers of a
sequential frame to their only legal values and hands the stream to pylibjpeg again; a stream it
finds nothing to repair in is refused, so the original decoders' errors stand.

Both decode paths (:mod:`pipelines.preprocess.decode` for model inputs,
:mod:`pipelines.preprocess.display` for the console, overlay and PDF) call :func:`register` at import.
"""

from __future__ import annotations

import logging

from pydicom import uid
from pydicom.pixels.decoders import JPEGBaseline8BitDecoder, JPEGExtended12BitDecoder
from pydicom.pixels.decoders import pylibjpeg as pydicom_pylibjpeg
from pydicom.pixels.decoders.base import DecodeRunner

log = logging.getLogger(__name__)

PLUGIN_LABEL = "pacsnode-sequential-sos-repair"
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline, extended sequential (Huffman)
_STANDALONE = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI: markers without a length
SOS_MARKER = 0xDA
_SEQUENTIAL_SOS = (0, 63, 0)  # Ss, Se, Ah<<4|Al for every sequential DCT scan

DECODER_DEPENDENCIES = {
    uid.JPEGBaseline8Bit: ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1"),
    uid.JPEGExtended12Bit: ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1"),
}


class NothingToRepair(ValueError):
    """The stream is not sequential JPEG with a malformed scan header: not this plugin's case."""


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin contract: usable where pydicom's pylibjpeg plugin is."""
    return transfer_syntax in DECODER_DEPENDENCIES and pydicom_pylibjpeg.is_available(
        transfer_syntax
    )


def repair_sequential_scan_headers(stream: bytes) -> bytes:
    """``stream`` with every SOS of a sequential DCT frame set to ``Ss=0, Se=63, Ah=Al=0``.

    Raises :class:`NothingToRepair` when the frame is not sequential DCT or every SOS is already
    legal. Only the three parameter bytes of each scan header change; entropy-coded data is not
    touched."""
    data = bytearray(stream)
    sequential = False
    changed = False
    i = 0
    while True:
        i = data.find(0xFF, i)
        if i < 0 or i + 3 >= len(data):
            break
        if data[i + 1] in (0x00, 0xFF):
            i += 1  # a stuffed byte in entropy-coded data, or a fill byte
            continue
        marker = data[i + 1]
        if marker in _STANDALONE:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SEQUENTIAL_SOF:
            sequential = True
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise NothingToRepair(f"not a sequential DCT frame (SOF marker 0xFF{marker:02X})")
        if marker == SOS_MARKER and sequential:
            params = i + 2 + length - 3  # Ss, Se, Ah/Al close the segment
            if params + 3 > len(data):
                raise NothingToRepair("truncated scan header")
            if tuple(data[params : params + 3]) != _SEQUENTIAL_SOS:
                data[params : params + 3] = bytes(_SEQUENTIAL_SOS)
                changed = True
            i += 2 + length
            continue  # entropy-coded data follows; find() skips to its next marker
        i += 2 + length
    if not changed:
        raise NothingToRepair("no malformed sequential scan header")
    return bytes(data)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes | bytearray:
    """pydicom's decoder-plugin function: repair the scan headers, decode with pylibjpeg."""
    repaired = repair_sequential_scan_headers(src)
    log.info("sequential JPEG frame with invalid SOS parameters decoded after repair")
    return pydicom_pylibjpeg._decode_frame(repaired, runner)


def register() -> None:
    """Add the plugin, last, to pydicom's two sequential JPEG decoders (idempotent)."""
    for decoder in (JPEGBaseline8BitDecoder, JPEGExtended12BitDecoder):
        if PLUGIN_LABEL not in decoder.available_plugins and is_available(decoder.UID):
            decoder.add_plugin(PLUGIN_LABEL, (__name__, "_decode_frame"))
