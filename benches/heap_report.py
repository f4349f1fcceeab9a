"""The live heap of a soak run under heaptrack, minute by minute: least, median and
greatest bytes allocated and not yet freed, from heaptrack's massif export.

    heaptrack_print -f target/soak/heap.zst -M target/soak/massif.out
    python benches/heap_report.py target/soak/massif.out target/soak/heap.png
"""

import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MIB = 1024 * 1024


def snapshots(path):
    """(seconds, heap bytes) of every snapshot of a massif file."""
    time = None
    with open(path) as f:
        for line in f:
            if line.startswith("time="):
                time = float(line[5:])
            elif line.startswith("mem_heap_B=") and time is not None:
                yield time, int(line[11:])


def main(massif_path, png_path):
    minutes = {}
    points = []
    for time, heap in snapshots(massif_path):
        minutes.setdefault(int(time // 60), []).append(heap / MIB)
        points.append((time / 60, heap / MIB))
    print("| minute | live heap MiB: least | median | greatest |")
    print("|---|---|---|---|")
    # The first and last minutes hold the start and the shutdown.
    for minute in sorted(minutes)[1:-1]:
        heap = minutes[minute]
        print(f"| {minute + 1} | {min(heap):.1f} | {statistics.median(heap):.1f} | {max(heap):.1f} |")
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot([t for t, _ in points], [h for _, h in points], linewidth=0.3)
    ax.set_xlabel("minute")
    ax.set_ylabel("live heap MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
