"""highdicom's "is this attribute part of that IOD?" answered once per question.

highdicom answers it by scanning every attribute of every module of the IOD (1.5–3.5 ms a call),
and asks it once per source image when it builds a SEG (is each a multi-frame image?), once per
finding region in the SR and for every derived object's content date: ~110 scans, 0.1–0.4 s of
CPU, for the results of a 100-slice CT. The answer depends only on the standard's tables highdicom
ships (and on classes :mod:`node.results.retired_classes` adds to them before the first question;
a class it does not know raises ``KeyError``, which is not remembered), so it is remembered per
(attribute, SOP class, excluded path elements) for the life of the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import highdicom._standard_utils as standard_utils
import highdicom.base
import highdicom.sr.content

# the modules that call it by a name of their own (``from … import is_attribute_in_iod``); the
# others (is_multiframe_image, does_iod_have_pixel_data) look it up in standard_utils
_CALLERS = (standard_utils, highdicom.base, highdicom.sr.content)
_ORIGINAL = standard_utils.is_attribute_in_iod


@lru_cache(maxsize=4096)
def _answer(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return bool(_ORIGINAL(attribute, sop_class_uid, list(exclude) if exclude is not None else None))


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    """highdicom's ``is_attribute_in_iod``, each distinct question scanned once."""
    exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
    return _answer(str(attribute), str(sop_class_uid), exclude)


def install() -> None:
    """Make highdicom ask :func:`is_attribute_in_iod`; idempotent."""
    for module in _CALLERS:
        if getattr(module, "is_attribute_in_iod", None) is _ORIGINAL:
            module.is_attribute_in_iod = is_attribute_in_iod  # type: ignore[attr-defined]
