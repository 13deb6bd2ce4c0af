"""`effspec search`: the papers' first step, a grid search for alpha, beta, gamma at phi = 1.

1. Enumerate (alpha, beta, gamma >= 1) on the grid with alpha * beta^2 * gamma^2 within
   ``--ratio-tolerance`` of ``--flops-ratio``; keep those whose ROUNDED model at phi = 1 really has
   that many times the base's MACs (within 10%, from effspec's own analysis).
2. Pick ``--trials`` of them (spread evenly over the sorted list) and enqueue them once in an optuna
   study. The study's storage (a SQLite file in DIR unless ``--storage URL``) is the only shared
   state: every ``effspec search`` worker pops waiting trials from it (an atomic WAITING -> RUNNING
   update), so workers on one storage split the trials and never run one twice.
3. Each trial compiles its candidate spec (written under DIR/candidates/) into a temp dir and runs
   the generated torch ``train.py`` for ``--trial-steps`` steps as a subprocess, then reads
   val_top1 / val_loss from the run's metrics.csv. A trial whose training fails is recorded as
   failed with its error and never retried. A trial whose worker died (SIGKILL, a lost machine) is
   marked failed as interrupted and its candidate enqueued again, so a rerun finishes exactly the
   trials that are missing.
4. Every worker, when it runs out of trials, writes DIR/results.csv, DIR/search.png and
   DIR/best.yaml from the whole study.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effspec.support.errors import UsageError

DEFAULT_GRID = "alpha=1.0:2.0:0.05,beta=1.0:1.5:0.05,gamma=1.0:1.5:0.05"
MACS_TOLERANCE = 0.10  # the real MACs ratio must be within 10% of the requested one
MAX_INTERRUPTIONS = 3  # a candidate whose worker died this often is not enqueued again
FOREIGN_WAIT_STEPS = 30  # x 0.1 s: how long a study without effspec's creator mark may be young
HEARTBEAT_S = 20  # for workers on other machines: a RUNNING trial silent for GRACE_S is stale
GRACE_S = 120
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


@dataclass(frozen=True)
class Candidate:
    alpha: float
    beta: float
    gamma: float
    macs: int
    params: int
    resolution: int
    macs_ratio: float

    @property
    def flops_ratio(self) -> float:
        return self.alpha * self.beta**2 * self.gamma**2

    @property
    def tag(self) -> str:
        return f"a{round(self.alpha * 1000)}-b{round(self.beta * 1000)}-g{round(self.gamma * 1000)}"


# ---------------------------------------------------------------------------------------------
# Candidates


def parse_grid(text: str) -> dict[str, list[float]]:
    """``alpha=1.0:2.0:0.05,beta=...`` -> the values of each coefficient (missing ones: the default grid)."""
    axes: dict[str, list[float]] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, spans = part.partition("=")
        name = name.strip()
        if name not in ("alpha", "beta", "gamma"):
            raise UsageError(f"--grid: expected alpha=, beta= or gamma=, found {part!r}")
        try:
            numbers = [float(x) for x in spans.split(":")]
        except ValueError:
            raise UsageError(f"--grid {name}: expected START:STOP:STEP numbers, found {spans!r}") from None
        if len(numbers) == 1:
            numbers = [numbers[0], numbers[0], 1.0]
        if len(numbers) != 3 or numbers[2] <= 0 or numbers[1] < numbers[0] or not all(map(math.isfinite, numbers)):
            raise UsageError(
                f"--grid {name}: expected START:STOP:STEP with START <= STOP and STEP > 0, found {spans!r}"
            )
        start, stop, step = numbers
        if start < 1:
            raise UsageError(f"--grid {name}: coefficients must be >= 1, found {start:g}")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > 1000:
            raise UsageError(f"--grid {name}: {count} values; expected at most 1000")
        axes[name] = [round(start + i * step, 6) for i in range(count)]
    defaults = {} if text == DEFAULT_GRID else parse_grid(DEFAULT_GRID)
    grid = {name: axes.get(name) or defaults[name] for name in ("alpha", "beta", "gamma")}
    from effspec.core.limits import check_grid

    check_grid("--grid", {name: len(values) for name, values in grid.items()})  # before any point is built
    return grid


def enumerate_candidates(
    spec_path: Path, grid: dict[str, list[float]], ratio: float, ratio_tolerance: float, divisor: int
) -> tuple[list[Candidate], int]:
    """The grid points near the FLOPs ratio whose rounded phi = 1 model meets it; and the base's MACs."""
    from effspec.tools.scale import Family, Settings

    base_family = Family(spec_path, Settings(1.0, 1.0, 1.0, divisor, False))
    base_macs = base_family.at(0.0).macs
    out = []
    for alpha, beta, gamma in itertools.product(grid["alpha"], grid["beta"], grid["gamma"]):
        if abs(alpha * beta**2 * gamma**2 - ratio) > ratio_tolerance * ratio:
            continue
        model = base_family.with_settings(Settings(alpha, beta, gamma, divisor, False)).at(1.0)
        macs_ratio = model.macs / base_macs
        if abs(macs_ratio - ratio) <= MACS_TOLERANCE * ratio:
            out.append(Candidate(alpha, beta, gamma, model.macs, model.params, model.resolution, macs_ratio))
    # Coefficients that round to the same network at phi = 1 are one candidate: keep the one whose
    # alpha * beta^2 * gamma^2 is closest to the ratio.
    unique: dict[tuple[int, int, int], Candidate] = {}
    for c in sorted(out, key=lambda c: (abs(c.flops_ratio - ratio), c.alpha, c.beta, c.gamma)):
        unique.setdefault((c.macs, c.params, c.resolution), c)
    return list(unique.values()), base_macs


def pick(candidates: list[Candidate], trials: int) -> list[Candidate]:
    """``trials`` candidates spread evenly over the list (sorted by alpha, beta, gamma)."""
    ordered = sorted(candidates, key=lambda c: (c.alpha, c.beta, c.gamma))
    if trials >= len(ordered):
        return ordered
    if trials == 1:
        return [ordered[len(ordered) // 2]]
    return [ordered[round(i * (len(ordered) - 1) / (trials - 1))] for i in range(trials)]


def candidate_spec_text(base: Path, out: Path, name: str, c: Candidate, divisor: int, phi: float, note: str) -> str:
    extends = Path(os.path.relpath(base.resolve(), out.resolve().parent)).as_posix()
    return (
        f"# {note}\n"
        f"extends: {json.dumps(extends)}\n"
        f"name: {name}\n"
        f"scaling: {{method: compound, phi: {phi:g}, alpha: {c.alpha:g}, beta: {c.beta:g}, gamma: {c.gamma:g}, "
        f"resolution_divisor: {divisor}}}\n"
    )


def _write_atomic(path: Path, text: str | bytes) -> None:
    """Every file of a search's folder, through effspec.support.output (atomic, unique temporary names)."""
    from effspec.support.output import write_file

    write_file(path, text, flag="", parents=True)


# ---------------------------------------------------------------------------------------------
# Workers and the study


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (tells a live worker from a reused pid); '' off Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def worker_alive(worker: str) -> bool | None:
    """True/False for a worker on this machine; None for one elsewhere (the heartbeat decides)."""
    host, _, rest = worker.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_start(pid) == start


@dataclass(frozen=True)
class Settings:
    spec: Path
    out: Path
    ratio: float
    data: str
    trial_steps: int
    batch_size: int
    resolution: int | None
    divisor: int
    device: str
    seed: int
    train_args: tuple[str, ...]

    def fingerprint(self, spec_sha256: str) -> dict[str, Any]:
        """What makes two searches the same search (workers must agree on it)."""
        return {
            "spec_sha256": spec_sha256,
            "ratio": self.ratio,
            "data": self.data,
            "trial_steps": self.trial_steps,
            "batch_size": self.batch_size,
            "resolution": self.resolution,
            "resolution_divisor": self.divisor,
            "seed": self.seed,
            "train_args": list(self.train_args),
        }


def _optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "optuna":
            raise
        raise UsageError("effspec search needs optuna: pip install 'effspec[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _requeue(study: Any, trial: Any) -> None:
    """An interrupted trial's candidate goes back into the queue (a bounded number of times)."""
    attrs = dict(trial.user_attrs)
    attempts = int(attrs.get("interruptions", 0)) + 1
    if attempts >= MAX_INTERRUPTIONS:
        return
    keep = {k: v for k, v in attrs.items() if k in ("candidate", "spec")}
    study.enqueue_trial(
        dict(trial.params or trial.system_attrs.get("fixed_params", {})), {**keep, "interruptions": attempts}
    )


def open_study(storage_url: str, name: str, fingerprint: dict[str, Any], picks: list[Candidate], specs: dict[str, str]):
    """Create the study and enqueue the picks exactly once (the study name's uniqueness is the lock)."""
    optuna = _optuna()
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    if storage_url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(8):  # workers starting together race to create the schema: the loser retries
        try:
            storage = optuna.storages.RDBStorage(storage_url, heartbeat_stale_trial_callback=_requeue, **kwargs)
            break
        except Exception as exc:  # a bad URL, a missing driver, a server that does not answer
            if attempt < 7 and type(exc).__name__ in ("IntegrityError", "OperationalError"):
                time.sleep(0.25 * (attempt + 1))
                continue
            raise UsageError(f"--storage {storage_url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=False)
        creator = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name)
        creator = False
    if creator:
        study.set_user_attr("settings", fingerprint)  # first: a study with a creator has its settings
        study.set_user_attr("creator", worker_id())
    else:
        for _ in range(FOREIGN_WAIT_STEPS):  # the creator names itself right after creating the study
            if "creator" in study.user_attrs:
                break
            time.sleep(0.1)
        else:
            raise UsageError(
                f"the storage already holds a study named {name!r} that effspec search did not create "
                "(no creator or settings): use another -o DIR or --storage"
            )
        for _ in range(1200):  # the creator is enqueueing right now: wait for it (unless it died)
            attrs = study.user_attrs
            if attrs.get("enqueued") or worker_alive(attrs.get("creator", "")) is False:
                break
            time.sleep(0.1)
        if study.user_attrs.get("settings") != fingerprint:
            raise UsageError(
                f"the storage already holds search {name!r} with other settings "
                f"({json.dumps(study.user_attrs['settings'])}): use another -o DIR or --storage"
            )
    if creator or not study.user_attrs.get("enqueued"):
        present = {t.user_attrs.get("candidate") for t in study.get_trials(deepcopy=False)}
        for c in picks:
            if c.tag not in present:
                study.enqueue_trial(
                    {"alpha": c.alpha, "beta": c.beta, "gamma": c.gamma},
                    {"candidate": c.tag, "spec": specs[c.tag], "interruptions": 0},
                )
        study.set_user_attr("enqueued", True)
    return study


def reap_dead_workers(study: Any) -> None:
    """RUNNING trials whose worker on this machine is gone: failed as interrupted, candidate requeued."""
    optuna = _optuna()
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None or worker_alive(worker) is not False:
            continue
        error = f"interrupted: worker {worker} exited while training"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "error", error)
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        _requeue(study, study._storage.get_trial(trial._trial_id))
    optuna.storages.fail_stale_trials(study)  # workers on other machines: their heartbeat stopped


def pop_trial(study: Any) -> Any | None:
    """Take one WAITING trial (atomically: a trial another worker took is skipped), or None."""
    optuna = _optuna()
    from optuna.trial import TrialState

    storage = study._storage
    for frozen in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                storage.set_trial_user_attr(frozen._trial_id, "worker", worker_id())
                return optuna.trial.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Records the trial's heartbeat while it trains (how workers elsewhere see that it lives)."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id), daemon=True)

    def _run(self, storage: Any, trial_id: int) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a transient database error: the next beat retries
                pass
            if self._stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# One trial


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The trainer dies with its worker (Linux), so a killed search leaves no orphan training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def train_trial(settings: Settings, spec_path: Path, train_resolution: int, trial_dir: Path) -> dict[str, float]:
    """Compile the candidate, run its generated torch train.py, return val_top1 / val_loss / seconds."""
    from effspec.emit.pipeline import compile_specs

    trial_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="effspec-search-") as tmp:
        written, _ = compile_specs([spec_path], ["torch"], Path(tmp))
        train_py = written[0] / "train.py"
        # train.py runs with cwd=trial_dir: every path it gets is absolute (a relative -o or --data
        # would be read from inside the trial folder)
        data = settings.data if settings.data == "synthetic" else os.path.abspath(settings.data)
        command = [
            sys.executable,
            str(train_py),
            "--data",
            data,
            "--max-steps",
            str(settings.trial_steps),
            "--batch-size",
            str(settings.batch_size),
            "--train-resolution",
            str(train_resolution),
            "--eval-resolution",
            str(train_resolution),
            "--output",
            str(trial_dir.resolve()),
            "--device",
            settings.device,
            "--seed",
            str(settings.seed),
            "--ema-decay",
            "0",
            "--no-tensorboard",
            "--log-every",
            str(max(1, settings.trial_steps // 10)),
        ]
        if settings.data == "synthetic":
            steps_images = settings.trial_steps * settings.batch_size
            command += [
                "--synthetic-train-size",
                str(steps_images),
                "--synthetic-val-size",
                str(4 * settings.batch_size),
            ]
        command += list(settings.train_args)  # data workers and threads: train.py's defaults (effspec.support.cpus)
        started = time.perf_counter()
        from effspec.support.output import open_append

        with os.fdopen(open_append(trial_dir / "train.log"), "a", encoding="utf-8") as log:  # never via a link
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            result = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=trial_dir,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        lines = (trial_dir / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = next((line for line in reversed(lines) if line.strip()), "")
        raise RuntimeError(f"train.py exited with status {result.returncode}: {last[-300:]}")
    metrics = trial_dir / "metrics.csv"
    rows = list(csv.DictReader(open(metrics, newline="", encoding="utf-8"))) if metrics.is_file() else []
    if not rows:
        raise RuntimeError(f"train.py wrote no evaluation row to {metrics}")
    return {"val_top1": float(rows[-1]["val_top1"]), "val_loss": float(rows[-1]["val_loss"]), "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Results


def collect(study: Any, candidates: dict[str, Candidate]) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        params = t.params or t.system_attrs.get("fixed_params", {})
        c = candidates.get(t.user_attrs.get("candidate", ""))
        a, b, g = params.get("alpha"), params.get("beta"), params.get("gamma")
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "alpha": a,
                "beta": b,
                "gamma": g,
                "flops_ratio": round(a * b**2 * g**2, 4) if None not in (a, b, g) else "",
                "macs_ratio": round(c.macs_ratio, 4) if c else "",
                "macs": c.macs if c else "",
                "params": c.params if c else "",
                "resolution": c.resolution if c else "",
                "train_resolution": t.user_attrs.get("train_resolution", ""),
                "val_top1": t.user_attrs.get("val_top1", ""),
                "val_loss": t.user_attrs.get("val_loss", ""),
                "seconds": round(t.user_attrs["seconds"], 2) if "seconds" in t.user_attrs else "",
                "spec": t.user_attrs.get("spec", ""),
                "worker": t.user_attrs.get("worker", ""),
                "error": t.user_attrs.get("error")
                or (f"interrupted: no heartbeat for {GRACE_S} s" if t.state.name == "FAIL" else ""),
            }
        )
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "complete" and r["val_top1"] != ""]
    if not done:
        return None
    return max(done, key=lambda r: (r["val_top1"], -(r["val_loss"] if r["val_loss"] != "" else math.inf), -r["trial"]))


def write_results(settings: Settings, rows: list[dict[str, Any]], base_name: str) -> list[Path]:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [settings.out / "results.csv"]
    _write_atomic(written[0], buffer.getvalue())
    best = best_row(rows)
    if best is not None:
        c = Candidate(best["alpha"], best["beta"], best["gamma"], 0, 0, 0, 0.0)
        note = (
            f"Written by `effspec search`: the best of {sum(r['state'] == 'complete' for r in rows)} trials "
            f"(val top-1 {best['val_top1']:.2f}%, {best['macs']:,} MACs = {best['macs_ratio']:g}x the base at phi 1).\n"
            "# Scale it to a budget with: effspec scale best.yaml --target-macs N -o OUT.yaml"
        )
        path = settings.out / "best.yaml"
        _write_atomic(path, candidate_spec_text(settings.spec, path, f"{base_name}-best", c, settings.divisor, 1, note))
        written.append(path)
        try:
            written.append(plot_search(rows, best, settings.out / "search.png", base_name, settings.ratio))
        except UsageError as exc:  # matplotlib missing: the CSV and best.yaml still stand
            print(f"note: {exc}; no search.png", file=sys.stderr)
    return written


def plot_search(rows: list[dict[str, Any]], best: dict[str, Any], path: Path, base_name: str, ratio: float) -> Path:
    from effspec.tools.diagram import import_matplotlib

    figure_class = import_matplotlib("search.png")
    done = [r for r in rows if r["state"] == "complete" and r["val_top1"] != ""]
    fig = figure_class(figsize=(7.5, 5))  # type: ignore[operator]
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
    from effspec.tools.diagram import save_figure

    return save_figure(fig, path, "")


# ---------------------------------------------------------------------------------------------
# The command


def run(args: Any) -> int:
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise UsageError(f"spec not found: {spec_path}")
    if not (math.isfinite(args.flops_ratio) and args.flops_ratio > 1):
        raise UsageError(f"--flops-ratio: expected a number > 1, found {args.flops_ratio:g}")
    if not (0 < args.ratio_tolerance < 1):
        raise UsageError(f"--ratio-tolerance: expected a fraction in (0, 1), found {args.ratio_tolerance:g}")
    if args.data != "synthetic" and not (Path(args.data) / "train").is_dir():
        raise UsageError(f"--data {args.data}: expected 'synthetic' or a directory with train/ and val/")
    grid = parse_grid(args.grid)

    from effspec.core.loader import load_spec
    from effspec.core.schema import CompoundScaling, ExplicitScaling

    loaded = load_spec(spec_path)
    base = loaded.spec
    if isinstance(base.scaling, ExplicitScaling):
        raise UsageError(f"{spec_path} has explicit scaling; search from its unscaled base spec instead")
    divisor = args.resolution_divisor
    if divisor is None:
        divisor = base.scaling.resolution_divisor if isinstance(base.scaling, CompoundScaling) else 8
    out = Path(args.output)
    from effspec.support.output import make_folder

    make_folder(out)  # before any work: a file in the way, a read-only or too long path is one line
    data = args.data if args.data == "synthetic" else str(Path(args.data).resolve())
    settings = Settings(
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

    candidates, base_macs = enumerate_candidates(spec_path, grid, args.flops_ratio, args.ratio_tolerance, divisor)
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
    specs: dict[str, str] = {}
    for c in candidates if len(candidates) <= 200 else picks:
        path = out / "candidates" / f"{base.name}-{c.tag}.yaml"
        text = candidate_spec_text(
            spec_path,
            path,
            f"{base.name[:40]}-{c.tag}",
            c,
            divisor,
            1,
            f"effspec search candidate: {c.macs:,} MACs, {c.macs_ratio:.3f}x the base, {c.params:,} parameters",
        )
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            _write_atomic(path, text)
        specs[c.tag] = path.relative_to(out).as_posix()

    storage = args.storage or f"sqlite:///{(out / 'search.db').resolve()}"
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = settings.fingerprint(loaded.sha256)
    study = open_study(storage, f"effspec-search-{base.name}", fingerprint, picks, specs)
    from optuna.trial import TrialState

    ran = 0
    while True:
        reap_dead_workers(study)
        trial = pop_trial(study)
        if trial is None:
            break
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
        train_res = c.resolution if args.resolution is None else max(8, round(args.resolution * c.gamma))
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

    rows = collect(study, by_tag)
    for path in write_results(settings, rows, base.name):
        print(f"wrote {path}")
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
