"""Prints a soak's samples as a table and draws its memory, CPU and latency curves.

    python benches/soak_report.py result.json soak.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(result_path, png_path):
    with open(result_path) as f:
        result = json.load(f)
    samples = result["samples"]
    print("| minute | RSS MiB | CPU cores | frames in/s | through the model/s | dropped | capture→scored p50/p99 ms | revisions | evidence frames held | resident MiB: mimalloc / malloc (heaps) / other anonymous / files |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in samples:
        scored = s["inferred_ms"]
        latency = f'{scored["p50"]:.0f} / {scored["p99"]:.0f}' if scored else "-"
        print(
            f'| {s["at_s"] / 60:.0f} | {s["rss_mib"]:.1f} | {s.get("cpu_cores", 0):.2f} | {s["frames_in_per_s"]:.1f} | '
            f'{s["frames_inferred_per_s"]:.1f} | {s["dropped"]} | {latency} | {s["revisions"]} | '
            f'{s.get("evidence_frames_held", "-")} | {by_kind(s)} |'
        )
    warm = [s for s in samples if s["at_s"] >= 300]
    if warm:
        rss = [s["rss_mib"] for s in warm]
        cpu = [s.get("cpu_cores", 0) for s in warm]
        print(f"\nafter 5 min: RSS {min(rss):.1f} to {max(rss):.1f} MiB (first {rss[0]:.1f}, last {rss[-1]:.1f}); "
              f"CPU {min(cpu):.2f} to {max(cpu):.2f} cores")
    print(f'peak RSS {result["peak_rss_mib"]:.1f} MiB; dropped {result["dropped"]}; work orders {result["work_orders"]}')
    draw(samples, png_path)


def by_kind(sample):
    r = sample.get("resident")
    if not r:
        return "-"
    return (f'{r["large_reservations_kib"] / 1024:.1f} / {r["malloc_arenas_kib"] / 1024:.1f} ({r["malloc_arena_heaps"]}) / '
            f'{r["other_anonymous_kib"] / 1024:.1f} / {r["files_kib"] / 1024:.1f}')


def draw(samples, path):
    minutes = [s["at_s"] / 60 for s in samples]
    fig, (memory, cpu, latency) = plt.subplots(3, 1, figsize=(6, 6), sharex=True)
    memory.plot(minutes, [s["rss_mib"] for s in samples], marker=".", label="RSS")
    if all(s.get("resident") for s in samples):
        memory.plot(minutes, [s["resident"]["large_reservations_kib"] / 1024 for s in samples], label="mimalloc")
        memory.plot(minutes, [s["resident"]["malloc_arenas_kib"] / 1024 for s in samples], label="malloc")
        memory.legend(loc="lower right", fontsize="small")
    memory.set_ylabel("RSS (MiB)")
    memory.set_ylim(bottom=0)
    cpu.plot(minutes, [s.get("cpu_cores", 0) for s in samples], marker=".", color="tab:orange")
    cpu.set_ylabel("CPU (cores)")
    cpu.set_ylim(bottom=0)
    p99 = [s["inferred_ms"]["p99"] if s["inferred_ms"] else None for s in samples]
    p50 = [s["inferred_ms"]["p50"] if s["inferred_ms"] else None for s in samples]
    latency.plot(minutes, p50, marker=".", label="p50", color="tab:green")
    latency.plot(minutes, p99, marker=".", label="p99", color="tab:red")
    latency.set_ylabel("capture→scored (ms)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper left")
    latency.set_xlabel("minute")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
