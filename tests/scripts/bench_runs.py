"""The best of several timed runs per variant, as `bench_run` (env.sh)
writes them, and the table the benchmarks print of them."""
import os


def best_of(out, events, runs, variants):
    """For each variant, the run of least CPU: (wall s, CPU us per event,
    peak RSS MB, records out)."""
    best = {}
    for v in variants:
        rows = []
        for run in range(1, runs + 1):
            t0, t1, user, sys_, rss = open(os.path.join(out, f"{v}-{run}.time")).read().split()
            records = int(open(os.path.join(out, f"{v}-{run}.records")).read().split("=")[1])
            wall = float(t1) - float(t0)
            rows.append((wall, (float(user) + float(sys_)) * 1e6 / events, int(rss) / 1024, records))
        best[v] = min(rows, key=lambda r: r[1])
    return best


def table(heading, events, best, labels):
    """Prints one row per (variant, label): events/s, CPU us per event,
    peak RSS and records out."""
    width = max(len(heading), *(len(label) for _, label in labels))
    print(f"{heading:<{width}} {'events/s':>10} {'CPU us/event':>13} {'peak RSS MB':>12} {'records out':>12}")
    for v, label in labels:
        wall, cpu, rss, records = best[v]
        print(f"{label:<{width}} {events / wall:>10,.0f} {cpu:>13.2f} {rss:>12.1f} {records:>12,}")
