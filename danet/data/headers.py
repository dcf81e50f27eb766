"""What an image file declares, read from its first bytes by plain ``struct`` code, no decoder.

The sandbox's caller must know what a decode will cost before a child is started (to charge
the shared memory budget, and to let a thumbnail skip the child altogether), but it must not
run decoder code on a stranger's bytes itself: PIL's WebP and TIFF header readers are C code
and plugins. ``declared`` reads the fixed fields of PNG (IHDR), GIF (logical screen), BMP
(BITMAPINFOHEADER), WebP (VP8/VP8L/VP8X) and JPEG (the first SOF marker, walking at most
``MAX_JPEG_MARKERS`` segments) and returns the width, height and a pessimistic bytes-per-pixel
of the decode (``load_image``'s conversions included, measured at 64 MP), or None for anything
else (TIFF, damaged or unknown files): those cost the full limit.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_JPEG_MARKERS = 256
"""Segments walked before SOF: real files have up to ~20 (APPn, DQT, DHT, COM)."""
PLAIN, WITH_ALPHA = 16, 32
"""Bytes per declared pixel of a decode to RGB: 3- or 1-channel sources, and sources that go through
RGBA (alpha, palettes); measured at 64 MP in the sandbox's child (1,024 and 2,048 MB)."""


@dataclass(frozen=True)
class Declared:
    format: str
    width: int
    height: int
    bytes_per_pixel: int
    progressive: bool = False        # a progressive JPEG (its scans multiply the decode time)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def declared(data: bytes) -> Declared | None:
    """The declared size of a PNG, GIF, BMP, WebP or JPEG, or None (other formats, or a damaged header)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
            return Declared("PNG", width, height, PLAIN if colour in (0, 2) else WITH_ALPHA)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return Declared("GIF", width, height, WITH_ALPHA)
        if data.startswith(b"BM") and len(data) >= 26:
            size = struct.unpack("<I", data[14:18])[0]
            if size == 12:
                width, height = struct.unpack("<HH", data[18:22])
            elif size >= 40:
                width, height = struct.unpack("<ii", data[18:26])
            else:
                return None
            return Declared("BMP", abs(width), abs(height), WITH_ALPHA)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
    except struct.error:
        return None
    return None


def _webp(data: bytes) -> Declared | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    else:
        return None
    return Declared("WEBP", width, height, WITH_ALPHA)


def _jpeg(data: bytes) -> Declared | None:
    position = 2
    for _ in range(MAX_JPEG_MARKERS):
        while position < len(data) and data[position] == 0xFF and data[position + 1:position + 2] == b"\xff":
            position += 1                                     # fill bytes before a marker
        if position + 4 > len(data) or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            position += 2
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            components = data[position + 9] if position + 9 < len(data) else 3
            return Declared("JPEG", width, height, PLAIN if components in (1, 3) else WITH_ALPHA,
                            progressive=marker in (0xC2, 0xC6, 0xCA, 0xCE))
        if marker == 0xDA or length < 2:
            return None
        position += 2 + length
    return None
