"""JSON on the per-request path: orjson, with the standard library's answer wherever orjson declines.

Every request body, event-stream event and telemetry post is parsed, and every counted call renders one JSON
log line: with the standard library that was about a tenth of the addon's CPU (docs/performance.md). orjson
parses 2-4 times and renders 6 times as fast. It declines a few inputs the standard library takes (NaN and
Infinity, lone surrogates, UTF-16/32 bytes, a byte-order mark, nesting past 1,024): for those, and for
everything orjson rejects, the standard library decides, so what parses, what fails and how it fails
(ValueError, UnicodeDecodeError, RecursionError) stay as they were. One difference is kept: an integer literal
outside 64 bits (below -2**63 or above 2**64 - 1) parses as a float, where the standard library gives an int.
No count takes such a value (token counts and telemetry measurements are bounded far below it, and a float
where an int is expected is ignored as it was), and checking every number for it would cost more than orjson
saves. Rendering has no such difference: an int past 64 bits is rendered by the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# Dataclasses and datetimes go to `default` as with the standard library (orjson would render them itself).
_DUMP_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def loads(data: bytes | str) -> Any:
    """`json.loads`, faster: orjson, and the standard library for what orjson declines (it parses it or raises
    exactly as before)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps_line(obj: Any, default: Callable[[Any], Any] | None = None, **_ignored: Any) -> str:
    """One compact JSON text without ASCII escaping (`ensure_ascii=False, separators=(",", ":")`), as structlog's
    `JSONRenderer(serializer=...)` calls it. Lone surrogates, integers past 64 bits and non-string keys, which
    orjson refuses, are rendered by the standard library with the same separators."""
    try:
        return orjson.dumps(obj, default=default, option=_DUMP_OPTIONS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=default)
