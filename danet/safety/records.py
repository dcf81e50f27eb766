"""Reading JSON that a stranger hands back: bounded before it is parsed, checked after.

``json.loads`` recurses once per nesting level (100,000 levels: ``RecursionError``), turns
``1e400`` into infinity (``int()`` of it: ``OverflowError``), accepts ``NaN``/``Infinity``,
and builds ~100 bytes of Python objects per byte of ``[{},{},...]``. ``scan_json`` measures a
text's nesting depth and its number of values in fixed-size chunks without recursion (a few
bytes of working memory per byte of one chunk); ``bounded_loads`` refuses a text over its
size, depth or value budget before parsing it and refuses non-finite or over-long numbers
while parsing. Every refusal is one ``InputError`` line naming the problem.

``read_points_record`` is the app's record load-back on top of that: the record's identity
(tool, image hash and size) and its points (whole numbers inside the image, at most the
number a page keeps) are checked field by field, so a wrong type is a sentence, not a
``TypeError``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from danet.errors import InputError

MAX_RECORD_BYTES = 16 << 20
"""A record of a 10,000-class model with 200-character names and per-class IoU of three outputs is ~10 MB."""
MAX_RECORD_DEPTH = 32
"""The app's records nest 4 levels (metrics -> output -> iou -> class)."""
MAX_RECORD_VALUES = 1_000_000
"""JSON values (containers, numbers, strings) a record may hold: ~100 MB of Python objects at worst."""
MAX_NUMBER_CHARS = 40
"""Digits a number may have: any coordinate, size or score fits in far fewer."""
MAX_RECORD_POINTS = 10_000
"""Points a record may list before any is looked at; more than ``max_points`` is refused anyway."""
SCAN_CHUNK = 1 << 20

_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN = (0x5B, 0x7B)           # [ {
_CLOSE = (0x5D, 0x7D)          # ] }
_SEPARATORS = (0x2C, 0x3A)     # , :


@dataclass(frozen=True)
class JsonShape:
    """What ``scan_json`` found: the deepest bracket nesting and an upper bound on the values."""

    depth: int
    values: int


def scan_json(text: str | bytes, chunk: int = SCAN_CHUNK) -> JsonShape:
    """Deepest ``[``/``{`` nesting and (at most) how many values a JSON text holds; brackets and
    commas inside strings are ignored. O(n), no recursion, memory of one chunk.

    Where the text is not valid JSON the figures may be off, but only after the point where
    ``json.loads`` stops with an error, so the depth it would reach is never underestimated.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    depth = deepest = 0
    containers = separators = 0
    inside = False                # within a string at the chunk's start
    run = 0                       # backslashes just before the chunk's start
    for start in range(0, len(raw), chunk):
        part = np.frombuffer(raw, dtype=np.uint8, count=min(chunk, len(raw) - start), offset=start)
        slashes = part == _BACKSLASH
        if run == 0 and not slashes.any():
            quote = part == _QUOTE
        else:
            index = np.arange(part.size, dtype=np.int32)
            last_plain = np.maximum.accumulate(np.where(slashes, np.int32(-1), index))  # last non-backslash <= i
            before = np.empty(part.size, dtype=np.int64)              # backslashes just before i
            before[0] = run
            before[1:] = index[:-1] - last_plain[:-1]
            before[1:][last_plain[:-1] < 0] += run                    # the run began in an earlier chunk
            run = int(before[-1] + 1) if slashes[-1] else 0
            quote = (part == _QUOTE) & (before % 2 == 0)
            del index, last_plain, before
        del slashes
        toggles = np.cumsum(quote, dtype=np.int32)
        in_string = ((toggles - quote) % 2 == 1) != inside        # strictly inside (quotes excluded)
        inside = bool((int(toggles[-1]) % 2 == 1) != inside)
        del toggles, quote
        outside = ~in_string
        opens = ((part == _OPEN[0]) | (part == _OPEN[1])) & outside
        closes = ((part == _CLOSE[0]) | (part == _CLOSE[1])) & outside
        containers += int(opens.sum())
        separators += int((((part == _SEPARATORS[0]) | (part == _SEPARATORS[1])) & outside).sum())
        levels = depth + np.cumsum(opens.astype(np.int32) - closes, dtype=np.int64)
        if levels.size:
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
    return JsonShape(deepest, containers + separators + 1 if raw.strip() else 0)


def _number(kind: str):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise InputError(f"it holds a number of {len(text):,} characters")
        value = float(text) if kind == "float" else int(text)
        if kind == "float" and not math.isfinite(value):
            raise InputError(f"it holds a number out of range ({text[:20]})")
        return value
    return parse


def _constant(name: str):
    raise InputError(f"it holds {name}, which is not a number JSON allows")


def bounded_loads(data: str | bytes, what: str = "the file", *, max_bytes: int = MAX_RECORD_BYTES,
                  max_depth: int = MAX_RECORD_DEPTH, max_values: int = MAX_RECORD_VALUES):
    """``json.loads`` of a stranger's text with its size, nesting, value count and numbers bounded;
    an ``InputError`` naming ``what`` and the problem otherwise."""
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise InputError(f"{what} is not text")
    if len(data) > max_bytes:
        raise InputError(f"{what} is {len(data):,} bytes, more than the {max_bytes:,} a record may have")
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{what} is not UTF-8 text") from None
    shape = scan_json(data)
    if shape.depth > max_depth:
        raise InputError(f"{what} nests {shape.depth:,} levels deep, more than the {max_depth} a record may")
    if shape.values > max_values:
        raise InputError(f"{what} holds about {shape.values:,} values, more than the {max_values:,} a record may")
    try:
        return json.loads(data, parse_float=_number("float"), parse_int=_number("int"), parse_constant=_constant)
    except InputError as error:
        raise InputError(f"{what} is not a usable record: {error}") from None
    except (ValueError, RecursionError, OverflowError, MemoryError) as error:
        raise InputError(f"{what} is not valid JSON ({' '.join(str(error).split())[:120]})") from None


def shown(value, limit: int = 60, *, quote: bool = True) -> str:
    """A stranger's value for a message: one line, printable, at most ``limit`` characters; strings
    in quotes unless ``quote`` is false (so ``"1"`` is not mistaken for the number 1)."""
    if quote or not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False)[:limit + 1]
        except (TypeError, ValueError, RecursionError):
            value = type(value).__name__
    text = "".join(ch if ch.isprintable() else " " for ch in value[:limit + 1])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _told(number: int) -> str:
    """A whole number for a message: in full up to 40 digits, else short (1e+300 stays one line)."""
    return str(number) if abs(number) < 10**40 else f"{float(number):.3g}"


def _whole(value, what: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (in ``low..high-1`` when given): a JSON whole number (``3`` or ``3.0``), not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} is {shown(value)}, not a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise InputError(f"{what} is {value!r}, not a whole number")
    number = int(value)
    if low is not None and high is not None and not low <= number < high:
        raise InputError(f"{what} is {number:,}, outside {low}..{high - 1:,}")
    return number


@dataclass(frozen=True)
class PointsRecord:
    """The points of a record of this image, in its order, repeats dropped."""

    points: list[tuple[int, int]]
    name: str                   # the image name the record gives (shortened), for messages


def read_points_record(data: str | bytes, image_sha256: str, image_size: tuple[int, int],
                       max_points: int, *, max_bytes: int = MAX_RECORD_BYTES) -> PointsRecord:
    """The points of a downloaded JSON record, if it is a record of this image (same sha256 and
    ``image_size`` (H, W)); every other outcome is one ``InputError`` line.

    A record with more distinct points than ``max_points`` is refused with the count (the app's
    own records never hold more than it keeps), as is one whose points lie outside the image.
    """
    record = bounded_loads(data, "the file", max_bytes=max_bytes)
    if not isinstance(record, dict) or record.get("tool") != "danet-lens" or "points" not in record:
        raise InputError("the file is not a danet-lens record (no tool/points)")
    image = record.get("image")
    if not isinstance(image, dict):
        raise InputError(f"the record's image is {shown(image)}, not a description of an image")
    name = shown(image.get("name", "unnamed"), quote=False)
    if image.get("sha256") != image_sha256:
        raise InputError(f"the record is for another image ({name}); choose that image first")
    height, width = (int(v) for v in image_size)
    size = image.get("size")
    if size is not None:
        if not isinstance(size, dict) or set(size) != {"height", "width"}:
            raise InputError(f"the record's image size is {shown(size)}, not {{height, width}}")
        recorded = (_whole(size["height"], "the record's image height", 1, 1 << 31),
                    _whole(size["width"], "the record's image width", 1, 1 << 31))
        if recorded != (height, width):
            raise InputError(f"the record's image was {recorded[1]}x{recorded[0]}, this one is {width}x{height}"
                             " (another size limit)")
    points = record["points"]
    if not isinstance(points, list):
        raise InputError(f"the record's points are {shown(points)}, not a list")
    if len(points) > MAX_RECORD_POINTS:
        raise InputError(f"the record lists {len(points):,} points; a page keeps at most {max_points}")
    kept: dict[tuple[int, int], None] = {}          # insertion-ordered, repeats once
    for number, point in enumerate(points, 1):
        if not isinstance(point, dict) or "x" not in point or "y" not in point:
            raise InputError(f"the record's point {number} is {shown(point)}, not an object with x and y")
        x, y = _whole(point["x"], f"point {number}'s x"), _whole(point["y"], f"point {number}'s y")
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"the record's point ({_told(x)}, {_told(y)}) lies outside the {width}x{height} image")
        kept[(x, y)] = None
    if len(kept) > max_points:
        raise InputError(f"the record holds {len(kept):,} points; a page keeps at most {max_points}")
    return PointsRecord(list(kept), name)
