#!/usr/bin/env python3
"""Write maasbox's RGBA PNG icons (no dependencies): a rounded indigo square with a white box
glyph. Run from anywhere; writes next to this file. Tauri needs RGBA PNGs."""
import math
import pathlib
import struct
import zlib

HERE = pathlib.Path(__file__).resolve().parent
BG = (79, 70, 229)  # indigo
FG = (255, 255, 255)


def coverage(x, y, n):
    """Sample (x, y) in [0, 1): 0 outside, 1 background, 2 glyph."""
    r = 0.22  # corner radius of the tile
    cx = min(max(x, r), 1 - r)
    cy = min(max(y, r), 1 - r)
    if (x - cx) ** 2 + (y - cy) ** 2 > r * r:
        return 0
    # The glyph: an open box (three sides of a square plus a lid line), stroke 0.09.
    s, lo, hi = 0.09, 0.26, 0.74
    inside = lo <= x <= hi and lo + 0.08 <= y <= hi
    hollow = lo + s <= x <= hi - s and lo + 0.08 + s <= y <= hi - s
    lid = lo - 0.04 <= x <= hi + 0.04 and lo - 0.06 <= y <= lo + 0.03
    return 2 if (inside and not hollow) or lid else 1


def render(n):
    rows = []
    ss = 4  # supersampling for smooth edges
    for j in range(n):
        row = bytearray([0])
        for i in range(n):
            acc = [0, 0, 0, 0]
            for sj in range(ss):
                for si in range(ss):
                    c = coverage((i + (si + 0.5) / ss) / n, (j + (sj + 0.5) / ss) / n, n)
                    if c:
                        col = FG if c == 2 else BG
                        acc[0] += col[0]
                        acc[1] += col[1]
                        acc[2] += col[2]
                        acc[3] += 1
            a = acc[3]
            if a:
                row += bytes([acc[0] // a, acc[1] // a, acc[2] // a, math.floor(255 * a / (ss * ss))])
            else:
                row += bytes(4)
        rows.append(bytes(row))
    raw = b"".join(rows)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", n, n, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


for name, size in [("32x32.png", 32), ("128x128.png", 128), ("128x128@2x.png", 256), ("icon.png", 512)]:
    (HERE / name).write_bytes(render(size))
    print("wrote", name)
