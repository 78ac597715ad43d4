"""A tiny PNG writer and raster canvas, enough for line plots with labels.

matplotlib is not a dependency of lmtrain, and a diagnostic plot needs only lines, rectangles
and a few words; PNG itself is a zlib stream of scanlines in CRC-checked chunks (RFC 2083), so
writing one takes a few lines of zlib and struct.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

Color = tuple[int, int, int]

# 3x5 bitmap glyphs, rows top to bottom, '#' = ink.
_FONT = {
    "0": "###,#.#,#.#,#.#,###", "1": ".#.,##.,.#.,.#.,###", "2": "###,..#,###,#..,###",
    "3": "###,..#,.##,..#,###", "4": "#.#,#.#,###,..#,..#", "5": "###,#..,###,..#,###",
    "6": "###,#..,###,#.#,###", "7": "###,..#,.#.,.#.,.#.", "8": "###,#.#,###,#.#,###",
    "9": "###,#.#,###,..#,###", "a": "...,.##,#.#,#.#,.##", "b": "#..,##.,#.#,#.#,##.",
    "c": "...,.##,#..,#..,.##", "d": "..#,.##,#.#,#.#,.##", "e": "...,.#.,###,#..,.##",
    "f": ".##,#..,##.,#..,#..", "g": "...,.##,#.#,.##,##.", "h": "#..,##.,#.#,#.#,#.#",
    "i": ".#.,...,.#.,.#.,.#.", "j": "..#,...,..#,#.#,.#.", "k": "#..,#.#,##.,#.#,#.#",
    "l": "##.,.#.,.#.,.#.,###", "m": "...,##.,###,#.#,#.#", "n": "...,##.,#.#,#.#,#.#",
    "o": "...,.#.,#.#,#.#,.#.", "p": "...,##.,#.#,##.,#..", "q": "...,.##,#.#,.##,..#",
    "r": "...,#.#,##.,#..,#..", "s": "...,.##,##.,..#,##.", "t": ".#.,###,.#.,.#.,.##",
    "u": "...,#.#,#.#,#.#,.##", "v": "...,#.#,#.#,#.#,.#.", "w": "...,#.#,#.#,###,##.",
    "x": "...,#.#,.#.,.#.,#.#", "y": "...,#.#,.##,..#,##.", "z": "...,###,.#.,#..,###",
    "-": "...,...,###,...,...", "_": "...,...,...,...,###", ".": "...,...,...,...,.#.",
    "/": "..#,..#,.#.,#..,#..", "|": ".#.,.#.,.#.,.#.,.#.", "(": ".#.,#..,#..,#..,.#.",
    ")": ".#.,..#,..#,..#,.#.", "=": "...,###,...,###,...", " ": "...,...,...,...,...",
    "+": "...,.#.,###,.#.,...", ":": "...,.#.,...,.#.,...",
    ",": "...,...,...,.#.,#..",
}  # fmt: skip


class Canvas:
    """An RGB image (H, W, 3) of uint8 with the few drawing operations a plot needs."""

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.pixels = torch.empty(height, width, 3, dtype=torch.uint8)
        self.pixels[:] = torch.tensor(background, dtype=torch.uint8)

    @property
    def height(self) -> int:
        return self.pixels.size(0)

    @property
    def width(self) -> int:
        return self.pixels.size(1)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill [x0, x1) x [y0, y1), clipped to the canvas."""
        x0, x1 = max(x0, 0), min(x1, self.width)
        y0, y1 = max(y0, 0), min(y1, self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = torch.tensor(color, dtype=torch.uint8)

    def line(
        self, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 2
    ) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for k in range(steps + 1):
            x = round(x0 + (x1 - x0) * k / steps)
            y = round(y0 + (y1 - y0) * k / steps)
            self.rect(
                x - width // 2,
                y - width // 2,
                x - width // 2 + width,
                y - width // 2 + width,
                color,
            )

    def text(self, x: int, y: int, s: str, color: Color = (0, 0, 0), scale: int = 2) -> int:
        """Draw `s` with its top-left corner at (x, y); returns the x just past it."""
        for ch in s.lower():
            rows = _FONT.get(ch, _FONT[" "]).split(",")
            for r, row in enumerate(rows):
                for c, bit in enumerate(row):
                    if bit == "#":
                        self.rect(
                            x + c * scale,
                            y + r * scale,
                            x + (c + 1) * scale,
                            y + (r + 1) * scale,
                            color,
                        )
            x += 4 * scale
        return x

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return 4 * scale * len(s)


def write_png(path: Path, pixels: torch.Tensor) -> None:
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    # Each scanline starts with its filter type; 0 = none.
    rows = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), pixels.reshape(height, -1)], 1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, RGB, no interlace
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.contiguous().numpy().tobytes(), 9))
        + chunk(b"IEND", b"")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
