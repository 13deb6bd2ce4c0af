"""The search's results from the whole study: DIR/results.csv, DIR/best.yaml and DIR/search.png."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from effspec.support.errors import UsageError
from effspec.tools.search.grid import Candidate, candidate_spec_text
from effspec.tools.search.study import GRACE_S
from effspec.tools.search.trials import Settings

RESULT_FIELDS = (
    "trial",
    "state",
    "alpha",
    "beta",
    "gamma",
    "flops_ratio",
    "macs_ratio",
    "macs",
    "params",
    "resolution",
    "train_resolution",
    "val_top1",
    "val_loss",
    "seconds",
    "spec",
    "worker",
    "error",
)

Row = dict[str, Any]  # one trial: a value per RESULT_FIELDS column, '' where the study does not know it


def write_atomic(path: Path, text: str | bytes) -> None:
    """Every file of a search's folder, through effspec.support.output (atomic, unique temporary names)."""
    from effspec.support.output import write_file

    write_file(path, text, flag="", parents=True)


def _row(trial: Any, candidates: dict[str, Candidate]) -> Row:
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    attrs = trial.user_attrs
    c = candidates.get(attrs.get("candidate", ""))
    a, b, g = params.get("alpha"), params.get("beta"), params.get("gamma")
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "alpha": a,
        "beta": b,
        "gamma": g,
        "flops_ratio": round(a * b**2 * g**2, 4) if None not in (a, b, g) else "",
        "macs_ratio": round(c.macs_ratio, 4) if c else "",
        "macs": c.macs if c else "",
        "params": c.params if c else "",
        "resolution": c.resolution if c else "",
        "train_resolution": attrs.get("train_resolution", ""),
        "val_top1": attrs.get("val_top1", ""),
        "val_loss": attrs.get("val_loss", ""),
        "seconds": round(attrs["seconds"], 2) if "seconds" in attrs else "",
        "spec": attrs.get("spec", ""),
        "worker": attrs.get("worker", ""),
        "error": attrs.get("error")
        or (f"interrupted: no heartbeat for {GRACE_S} s" if trial.state.name == "FAIL" else ""),
    }


def collect(study: Any, candidates: dict[str, Candidate]) -> list[Row]:
    """Every trial of the study, in trial order."""
    return [_row(t, candidates) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


def completed(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r["state"] == "complete" and r["val_top1"] != ""]


def best_row(rows: list[Row]) -> Row | None:
    done = completed(rows)
    if not done:
        return None
    return max(done, key=lambda r: (r["val_top1"], -(r["val_loss"] if r["val_loss"] != "" else math.inf), -r["trial"]))


def write_results(settings: Settings, rows: list[Row], base_name: str) -> list[Path]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [settings.out / "results.csv"]
    write_atomic(written[0], buffer.getvalue())
    best = best_row(rows)
    if best is not None:
        c = Candidate(best["alpha"], best["beta"], best["gamma"], 0, 0, 0, 0.0)
        note = (
            f"Written by `effspec search`: the best of {sum(r['state'] == 'complete' for r in rows)} trials "
            f"(val top-1 {best['val_top1']:.2f}%, {best['macs']:,} MACs = {best['macs_ratio']:g}x the base at phi 1).\n"
            "# Scale it to a budget with: effspec scale best.yaml --target-macs N -o OUT.yaml"
        )
        path = settings.out / "best.yaml"
        write_atomic(path, candidate_spec_text(settings.spec, path, f"{base_name}-best", c, settings.divisor, 1, note))
        written.append(path)
        from effspec.tools.search.figure import plot_search

        try:
            written.append(plot_search(rows, best, settings.out / "search.png", base_name, settings.ratio))
        except UsageError as exc:  # matplotlib missing: the CSV and best.yaml still stand
            print(f"note: {exc}; no search.png", file=sys.stderr)
    return written
