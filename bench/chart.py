"""Draws bench/results/chart.png: median wall time per case and peer, with
min-max whiskers, on a log scale (no-change builds and cold builds differ by
two orders of magnitude). Reads results.json written by bench/cmd/benchreport.

usage: chart.py results.json chart.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"docker": "#1d63ed", "buildah": "#892ca0", "buildkit": "#2f9e44", "kiln": "#e8590c",
          "floor": "#868e96"}


def main(src, dst):
    with open(src) as f:
        res = json.load(f)
    cases = res["cases"]
    peers = list(res["peers"]) + ["floor"]
    labels = [f'{c["scenario"]}\n{c["case"]}' for c in cases]
    width = 0.8 / len(peers)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(cases)), 5.5))
    for i, peer in enumerate(peers):
        xs, meds, lo, hi, failed = [], [], [], [], []
        for j, c in enumerate(cases):
            st = c["peers"].get(peer)
            if not st:
                continue
            x = j + (i - (len(peers) - 1) / 2) * width
            if st["runs"] == 0:
                failed.append(x)
                continue
            xs.append(x)
            meds.append(st["median_seconds"])
            lo.append(st["median_seconds"] - st["min_seconds"])
            hi.append(st["max_seconds"] - st["median_seconds"])
        if xs:
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=peer,
                   color=COLORS.get(peer, None), edgecolor="black", linewidth=0.3)
        for x in failed:
            ax.text(x, 0.12, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color="red")
    ax.set_yscale("log")
    ax.set_ylabel("wall time, s (median, min–max; log scale)")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(f'Fresh-runner builds against a warm registry cache; "-warm": local state kept '
                 f'({res["reps"]} runs each)')
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
