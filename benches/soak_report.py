"""Prints a soak's samples as a table and draws its memory curve.

    python benches/soak_report.py result.json memory.png
"""

import json
import struct
import sys
import zlib


def main(result_path, png_path):
    with open(result_path) as f:
        result = json.load(f)
    samples = result["samples"]
    print("| minute | RSS MiB | frames in/s | through the model/s | dropped | capture→scored p50/p99 ms | revisions |")
    print("|---|---|---|---|---|---|---|")
    for s in samples:
        scored = s["inferred_ms"]
        latency = f'{scored["p50"]:.0f} / {scored["p99"]:.0f}' if scored else "-"
        print(
            f'| {s["at_s"] / 60:.0f} | {s["rss_mib"]:.1f} | {s["frames_in_per_s"]:.1f} | '
            f'{s["frames_inferred_per_s"]:.1f} | {s["dropped"]} | {latency} | {s["revisions"]} |'
        )
    warm = [s["rss_mib"] for s in samples if s["at_s"] >= 300]
    if warm:
        print(f"\nafter 5 min: RSS {min(warm):.1f} to {max(warm):.1f} MiB (first {warm[0]:.1f}, last {warm[-1]:.1f})")
    print(f'peak RSS {result["peak_rss_mib"]:.1f} MiB; dropped {result["dropped"]}; work orders {result["work_orders"]}')
    draw(samples, png_path)


def draw(samples, path, width=480, height=200):
    """A line chart of RSS over time, written as a PNG without a plotting library."""
    pixels = [[255] * width for _ in range(height)]
    if samples:
        top = max(s["rss_mib"] for s in samples) * 1.1
        end = max(s["at_s"] for s in samples)
        points = [
            (int(s["at_s"] / end * (width - 11)) + 10, height - 11 - int(s["rss_mib"] / top * (height - 21)))
            for s in samples
        ]
        for y in range(height - 10):
            pixels[y][10] = 0
        for x in range(10, width):
            pixels[height - 11][x] = 0
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            steps = max(abs(x1 - x0), abs(y1 - y0), 1)
            for i in range(steps + 1):
                x = x0 + (x1 - x0) * i // steps
                y = y0 + (y1 - y0) * i // steps
                pixels[y][x] = 0
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
