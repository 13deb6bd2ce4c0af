"""The `effspec search` command: check the flags, write the candidates, run trials until the study
has none waiting, then write the results."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effspec.support.errors import UsageError
from effspec.tools.search.grid import Candidate, Grid, candidate_spec_text, enumerate_candidates, parse_grid, pick
from effspec.tools.search.results import Row, best_row, collect, write_atomic, write_results
from effspec.tools.search.study import Heartbeat, open_study, pop_trial, reap_dead_workers
from effspec.tools.search.trials import Settings, train_trial

if TYPE_CHECKING:
    from effspec.core.schema import Spec


def _check_flags(args: argparse.Namespace) -> Path:
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise UsageError(f"spec not found: {spec_path}")
    if not (math.isfinite(args.flops_ratio) and args.flops_ratio > 1):
        raise UsageError(f"--flops-ratio: expected a number > 1, found {args.flops_ratio:g}")
    if not (0 < args.ratio_tolerance < 1):
        raise UsageError(f"--ratio-tolerance: expected a fraction in (0, 1), found {args.ratio_tolerance:g}")
    if args.data != "synthetic" and not (Path(args.data) / "train").is_dir():
        raise UsageError(f"--data {args.data}: expected 'synthetic' or a directory with train/ and val/")
    return spec_path


def _settings(args: argparse.Namespace, spec_path: Path, base: Spec) -> Settings:
    """The search's settings; the output folder is made (before any work: a file in the way, a
    read-only or too long path is one line)."""
    from effspec.core.schema import CompoundScaling, ExplicitScaling
    from effspec.support.output import make_folder

    if isinstance(base.scaling, ExplicitScaling):
        raise UsageError(f"{spec_path} has explicit scaling; search from its unscaled base spec instead")
    divisor = args.resolution_divisor
    if divisor is None:
        divisor = base.scaling.resolution_divisor if isinstance(base.scaling, CompoundScaling) else 8
    out = Path(args.output)
    make_folder(out)
    data = args.data if args.data == "synthetic" else str(Path(args.data).resolve())
    return Settings(
        spec_path,
        out,
        args.flops_ratio,
        data,
        args.trial_steps,
        args.batch_size,
        args.resolution,
        divisor,
        args.device,
        args.seed,
        tuple(args.train_arg or ()),
    )


def _write_candidates(settings: Settings, base_name: str, candidates: list[Candidate]) -> dict[str, str]:
    """Each candidate's spec under DIR/candidates/ (unchanged files are not rewritten): tag -> path in DIR."""
    out = settings.out
    specs: dict[str, str] = {}
    for c in candidates:
        path = out / "candidates" / f"{base_name}-{c.tag}.yaml"
        text = candidate_spec_text(
            settings.spec,
            path,
            f"{base_name[:40]}-{c.tag}",
            c,
            settings.divisor,
            1,
            f"effspec search candidate: {c.macs:,} MACs, {c.macs_ratio:.3f}x the base, {c.params:,} parameters",
        )
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text)
        specs[c.tag] = path.relative_to(out).as_posix()
    return specs


def _run_trials(study: Any, settings: Settings, grid: Grid, by_tag: dict[str, Candidate], specs: dict[str, str]) -> int:
    """Pop and train waiting trials until none is left; how many this worker completed."""
    from optuna.trial import TrialState

    out = settings.out
    ran = 0
    while True:
        reap_dead_workers(study)
        trial = pop_trial(study)
        if trial is None:
            return ran
        tag = trial.user_attrs.get("candidate") or ""
        if tag not in by_tag:  # enqueued by a worker with another grid (the settings check forbids it)
            trial.set_user_attr("error", f"candidate {tag!r} is not on this worker's grid")
            study.tell(trial, state=TrialState.FAIL)
            continue
        c = by_tag[tag]
        alpha = trial.suggest_float("alpha", 1.0, max(grid["alpha"]) + 1)
        beta = trial.suggest_float("beta", 1.0, max(grid["beta"]) + 1)
        gamma = trial.suggest_float("gamma", 1.0, max(grid["gamma"]) + 1)
        assert (alpha, beta, gamma) == (c.alpha, c.beta, c.gamma), (alpha, beta, gamma, c)
        train_res = c.resolution if settings.resolution is None else max(8, round(settings.resolution * c.gamma))
        trial.set_user_attr("train_resolution", train_res)
        trial_dir = out / "trials" / f"{trial.number:04d}-{tag}"
        label = f"trial {trial.number}: alpha {alpha:g} beta {beta:g} gamma {gamma:g} ({c.macs_ratio:.2f}x MACs)"
        print(f"{label}: training at {train_res}px ...", file=sys.stderr)
        try:
            with Heartbeat(study._storage, trial._trial_id):
                metrics = train_trial(settings, out / specs[tag], train_res, trial_dir)
        except Exception as exc:  # recorded as failed with its error, never retried
            message = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message[:1000])
            study.tell(trial, state=TrialState.FAIL)
            print(f"{label}: failed: {message}", file=sys.stderr)
            continue
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        study.tell(trial, metrics["val_top1"])
        ran += 1
        print(
            f"{label}: top-1 {metrics['val_top1']:.2f}%, loss {metrics['val_loss']:.4f} ({metrics['seconds']:.1f} s)",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    spec_path = _check_flags(args)
    grid = parse_grid(args.grid)

    from effspec.core.loader import load_spec

    loaded = load_spec(spec_path)
    base = loaded.spec
    settings = _settings(args, spec_path, base)
    out = settings.out

    candidates, base_macs = enumerate_candidates(
        spec_path, grid, args.flops_ratio, args.ratio_tolerance, settings.divisor
    )
    if not candidates:
        raise UsageError(
            f"no (alpha, beta, gamma) on the grid gives {args.flops_ratio:g}x the base's {base_macs:,} MACs "
            f"(within {args.ratio_tolerance:.0%} by the formula and 10% on the rounded model): "
            "widen --grid or --ratio-tolerance, or lower --resolution-divisor"
        )
    picks = pick(candidates, args.trials)
    print(
        f"{base.name}: {len(candidates)} candidates on the grid at {args.flops_ratio:g}x MACs "
        f"(base {base_macs:,}); {len(picks)} trials of {args.trial_steps} steps",
        file=sys.stderr,
    )
    by_tag = {c.tag: c for c in candidates}
    specs = _write_candidates(settings, base.name, candidates if len(candidates) <= 200 else picks)

    storage = args.storage or f"sqlite:///{(out / 'search.db').resolve()}"
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(storage, f"effspec-search-{base.name}", settings.fingerprint(loaded.sha256), picks, specs)
    ran = _run_trials(study, settings, grid, by_tag, specs)

    rows = collect(study, by_tag)
    for path in write_results(settings, rows, base.name):
        print(f"wrote {path}")
    return _summary(ran, rows)


def _summary(ran: int, rows: list[Row]) -> int:
    """The study's state in two lines; 0 if a trial completed (or one still runs elsewhere), else 1."""
    states = [r["state"] for r in rows]
    print(
        f"{ran} trial(s) run by this worker; study: {states.count('complete')} complete, "
        f"{states.count('fail')} failed, {states.count('running')} running elsewhere"
    )
    best = best_row(rows)
    if best is not None:
        print(
            f"best: alpha {best['alpha']:g}, beta {best['beta']:g}, gamma {best['gamma']:g} "
            f"(val top-1 {best['val_top1']:.2f}%, {best['macs']:,} MACs)"
        )
        return 0
    if states.count("running"):
        return 0
    print("effspec: no trial completed", file=sys.stderr)
    return 1
