"""The search's only shared state: the optuna study (created once, locked by its name), its queue of
waiting trials, the workers that took them, and their heartbeats.

optuna is optional (``effspec[search]``) and imported here only: its objects are typed ``Any``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from effspec.support.errors import UsageError
from effspec.tools.search.grid import Candidate

MAX_INTERRUPTIONS = 3  # a candidate whose worker died this often is not enqueued again
FOREIGN_WAIT_STEPS = 30  # x 0.1 s: how long a study without effspec's creator mark may be young
HEARTBEAT_S = 20  # for workers on other machines: a RUNNING trial silent for GRACE_S is stale
GRACE_S = 120


# ---------------------------------------------------------------------------------------------
# Workers


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


# ---------------------------------------------------------------------------------------------
# The study


def import_optuna() -> Any:
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


def _storage(optuna: Any, storage_url: str) -> Any:
    """The RDB storage with heartbeats; a URL that does not open is one line."""
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    if storage_url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(8):  # workers starting together race to create the schema: the loser retries
        try:
            return optuna.storages.RDBStorage(storage_url, heartbeat_stale_trial_callback=_requeue, **kwargs)
        except Exception as exc:  # a bad URL, a missing driver, a server that does not answer
            if attempt < 7 and type(exc).__name__ in ("IntegrityError", "OperationalError"):
                time.sleep(0.25 * (attempt + 1))
                continue
            raise UsageError(f"--storage {storage_url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _join(study: Any, name: str, fingerprint: dict[str, Any]) -> None:
    """A study another worker created: wait until its creator has named itself and enqueued, then
    check that it is the same search."""
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


def open_study(
    storage_url: str, name: str, fingerprint: dict[str, Any], picks: list[Candidate], specs: dict[str, str]
) -> Any:
    """Create the study and enqueue the picks exactly once (the study name's uniqueness is the lock)."""
    optuna = import_optuna()
    storage = _storage(optuna, storage_url)
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
        _join(study, name, fingerprint)
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
    optuna = import_optuna()
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
    optuna = import_optuna()
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
