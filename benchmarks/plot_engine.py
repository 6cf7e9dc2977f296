"""Bar chart of output tokens/s per system from bench_engine.py JSON files
(one group of bars per file, e.g. one per workload or device).

    python benchmarks/plot_engine.py nano.json fixed.json --out docs/bench_engine_h200.png
"""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    runs = [json.load(open(path)) for path in args.json]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = 0.0
    ticks, labels = [], []
    newline = "\n"
    for run in runs:
        systems = run["systems"]
        for i, (name, r) in enumerate(systems.items()):
            tok_s = r["output_tokens_per_s"]
            bar = ax.bar(x + i, tok_s, color="C0" if name.startswith("mini") else f"C{i + 1}")
            ax.bar_label(bar, labels=[f"{tok_s:,.0f}"], fontsize=8)
            ticks.append(x + i)
            eager = " (eager)" if run.get("enforce_eager") and name.startswith("mini") else ""
            labels.append(f"{name.replace(' ', newline, 1)}{eager}\n[{run['workload']}]")
        x += len(systems) + 0.8
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("output tokens / s")
    first = runs[0]
    ax.set_title(args.title or f"{first['device']}, {first['model_size']} model, "
                 f"{first['dtype']} ({first['date'][:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
