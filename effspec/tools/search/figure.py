"""DIR/search.png: validation top-1 against MACs for every completed trial, the chosen one starred."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from effspec.tools.search.results import Row, completed


def plot_search(rows: list[Row], best: Row, path: Path, base_name: str, ratio: float) -> Path:
    from effspec.tools.diagram import import_matplotlib, save_figure

    figure_class = cast(Callable[..., Any], import_matplotlib("search.png"))  # matplotlib's Figure
    done = completed(rows)
    fig = figure_class(figsize=(7.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    scatter = ax.scatter(
        [r["macs"] / 1e6 for r in done],
        [r["val_top1"] for r in done],
        c=[r["val_loss"] for r in done],
        cmap="viridis_r",
        s=40,
        edgecolors="#333333",
        linewidths=0.5,
        zorder=3,
    )
    fig.colorbar(scatter, ax=ax, label="validation loss")
    for i, r in enumerate(sorted(done, key=lambda r: r["macs"])):  # alternate above/below: neighbours differ
        ax.annotate(
            f"{r['alpha']:g}/{r['beta']:g}/{r['gamma']:g}",
            (r["macs"] / 1e6, r["val_top1"]),
            textcoords="offset points",
            xytext=(4, 6 if i % 2 == 0 else -12),
            fontsize=7,
            color="#444444",
        )
    ax.scatter([best["macs"] / 1e6], [best["val_top1"]], marker="*", s=320, c="#d62728", zorder=4)
    ax.text(
        0.02,
        0.97,
        f"\u2605 chosen: alpha {best['alpha']:g}, beta {best['beta']:g}, gamma {best['gamma']:g}\n"
        f"top-1 {best['val_top1']:.2f}%, loss {best['val_loss']:.4f}, {best['macs']:,} MACs",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        color="#d62728",
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#d62728", "alpha": 0.9},
    )
    failed = sum(r["state"] == "fail" for r in rows)
    ax.set_xlabel("MACs of the candidate at phi = 1 (M); points labelled alpha/beta/gamma")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(
        f"{base_name}: alpha/beta/gamma search at {ratio:g}x FLOPs ({len(done)} trials"
        + (f", {failed} failed)" if failed else ")"),
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.3)
    fig.tight_layout()
    return save_figure(fig, path, "")
