"""The tune's study. One idea: Optuna holds every training a tune starts, as one trial each, so that any number of
workers, on this machine or others, can share the work and a killed tune or worker loses nothing finished.

Where it lives (`open_study`): by default a SQLite file in the tune folder (embedded, nothing to start);
`--storage URL` for a database server (PostgreSQL, MySQL: anything Optuna's RDBStorage takes); `--storage
journal:PATH` for a journal file on a shared filesystem (clusters without a database).

How a training moves through it: the tune puts it in the queue once (`TuneStudy.ensure`: an Optuna trial
WAITING, its config and run folder in its user attributes); exactly one worker takes it (`take`: WAITING ->
RUNNING is a compare-and-set in every Optuna storage); the worker beats while it trains (`beat`); it ends
COMPLETE (its best validation accuracy the value, each epoch's an intermediate value), PRUNED, or FAIL with the
reason (a diverged loss). A worker that stops beating (killed, its machine gone) leaves its training RUNNING:
any live worker fails it and queues it again (`retry_stale`), and the
retry continues from the run's last checkpoint. Optuna's own heartbeat covers only its database storages, not
the journal, so vitdist beats the same way on every storage (a user attribute) and leaves the retry to Optuna
(RetryHeartbeatStaleTrialCallback)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

STUDY_FILE = "study.db"  # the default storage, in the tune folder
BEATS_MISSED = 3  # a RUNNING training whose worker has not beaten for this many intervals is taken for dead
MAX_RETRY = 3  # a training whose workers keep dying is retried this often, then the tune stops on it
COORDINATOR_STALE_S = 120.0  # a tune whose coordinator has not beaten for this long is not running


def storage_url(spec: Optional[str], tune_dir: Path) -> str:
    """The storage as a string another process (a local worker, another machine) can open the same way."""
    return spec or f"sqlite:///{(tune_dir / STUDY_FILE).resolve()}"


def open_storage(url: str):
    """Optuna's storage for url: journal:PATH, or a database URL (SQLite waits for a busy file, not failing)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # vitdist says what happens, once, in its own words
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    immediate_transactions(storage.engine)
    return storage


def immediate_transactions(engine) -> None:
    """SQLite's transactions take the write lock as they begin (BEGIN IMMEDIATE), so that a read and the write it
    decides (Optuna's WAITING -> RUNNING) are one step against other processes: with SQLite's default (deferred),
    two workers can both read WAITING and both claim the training, or deadlock on the upgrade and fail at once
    instead of waiting for the lock."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off: the one below instead

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections opened while Optuna set up the file: new ones get the above


RUN_CONTROL = ("resume", "overwrite", "test_at_end", "checkpoint_every_epochs", "checkpoint_every_steps", "log.",
               "data.num_workers", "data.download")  # how a training is driven, not what it trains


def training_key(run_dir: str, config: dict) -> str:
    """What makes two trainings the same: the folder and what is trained, the config less RUN_CONTROL (a resumed
    tune with other flags is new; one continued without --overwrite, as its own continue command is, is not)."""
    def trained(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(trained(v, f"{prefix}{k}."))
            elif not f"{prefix}{k}".startswith(RUN_CONTROL):
                out[f"{prefix}{k}"] = v
        return out

    digest = hashlib.sha1(json.dumps(trained(config), sort_keys=True).encode()).hexdigest()[:12]
    return f"{run_dir}#{digest}"


class TuneStudy:
    """One tune's Optuna study: the queue of its trainings and the record of each."""

    def __init__(self, url: str, name: str, heartbeat_s: float = 10.0, pruner: str = "successive-halving",
                 max_epochs: int = 10):
        import optuna

        self.url, self.name, self.heartbeat_s = url, name, heartbeat_s
        self.storage = open_storage(url)
        self.study = optuna.create_study(storage=self.storage, study_name=name, direction="maximize",
                                         load_if_exists=True)
        self.id = self.storage.get_study_id_from_name(name)
        self.pruner = make_pruner(pruner, max_epochs)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._keys: dict[int, Optional[str]] = {}

    # --- the record

    def trials(self, states=None) -> list:
        return self.storage.get_all_trials(self.id, deepcopy=False, states=states)

    def latest(self, key: str, trials: Optional[list] = None):
        """The training's latest trial (a retried one has several), or None if it was never queued. trials: a
        snapshot of the study's, to read many trainings at one look."""
        mine = [t for t in (self.trials() if trials is None else trials) if self.key_of(t) == key]
        return max(mine, key=lambda t: t.number) if mine else None

    def key_of(self, t) -> Optional[str]:
        """A trial's training key, from its own folder and config (a study an earlier vitdist wrote is read with
        today's training_key); remembered, as a trial's config never changes."""
        key = self._keys.get(t._trial_id)
        if key is None:
            a = t.user_attrs
            key = training_key(a["run_dir"], a["config"]) if "config" in a and "run_dir" in a else a.get("key")
            self._keys[t._trial_id] = key
        return key

    def finished(self, key: str, trials: Optional[list] = None):
        """The training's trial once it has ended for good (COMPLETE, PRUNED, or FAIL with a reason); else None.
        A FAIL without a reason (its worker died) is retried: it has not ended."""
        from optuna.trial import TrialState

        t = self.latest(key, trials)
        if t is not None and (t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
                              (t.state == TrialState.FAIL and ("error" in t.user_attrs or "crash" in t.user_attrs))):
            return t
        return None

    # --- the queue

    def ensure(self, run_dir: str, config: dict, **attrs) -> bool:
        """Queue the training unless the study has it already (queued, running, or ended: a diverged run is a
        result; a dead worker's is queued again by retry_stale). One that crashed (a bug, a missing file on a
        worker's machine) is queued again: a resumed tune retries it. Returns whether it was queued now."""
        from optuna.trial import TrialState

        key = training_key(run_dir, config)
        t = self.latest(key)
        if t is not None and (t.state != TrialState.FAIL or "error" in t.user_attrs):
            return False
        self.study.enqueue_trial(attrs.pop("params", None) or {}, user_attrs={
            "key": key, "run_dir": run_dir, "config": config, **attrs})
        return True

    def take(self) -> Optional[int]:
        """A waiting training's trial id, now RUNNING and this worker's, or None when none waits. Two workers
        never take the same one: the storage sets WAITING -> RUNNING for one of them only."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for t in sorted(self.trials(states=(TrialState.WAITING,)), key=lambda t: t.number):
            try:
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            self.beat(t._trial_id)
            self.storage.set_trial_user_attr(t._trial_id, "worker", self.worker)
            return t._trial_id
        return None

    def beat(self, trial_id: int) -> None:
        self.storage.set_trial_user_attr(trial_id, "beat", time.time())

    def retry_stale(self, say=print) -> list[int]:
        """Fail each RUNNING training whose worker has stopped beating, and queue it again (the same
        config and folder). Returns the failed trials' numbers."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        now, out = time.time(), []
        for t in self.trials(states=(TrialState.RUNNING,)):
            started = t.datetime_start.timestamp() if t.datetime_start else now
            last = max(t.user_attrs.get("beat", 0.0), started)
            if now - last < BEATS_MISSED * self.heartbeat_s:
                continue
            given_up = len(t.system_attrs.get("retry_history", [])) >= MAX_RETRY  # the tune stops on it
            try:
                if given_up:  # said before the FAIL: a finished trial's attributes are fixed
                    why = f"its worker died {MAX_RETRY + 1} times (killed, or its machine lost)"
                    self.storage.set_trial_user_attr(t._trial_id, "crash",
                                                     f"{why}, the last on {t.user_attrs['worker']}")
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # another worker got there first, or it ended after all
                continue
            if given_up:
                continue
            self.requeue(t._trial_id, None)
            say(f"tune: the worker of trial {t.number} ({t.user_attrs.get('run_dir')}, on "
                f"{t.user_attrs.get('worker')}) stopped beating {now - last:.0f} s ago: queued again")
            out.append(t.number)
        return out

    def requeue(self, trial_id: int, max_retry: Optional[int]) -> None:
        """A FAILed training queued again as a new trial (the same config, folder and parameters; its retry
        history in its system attributes): Optuna's RetryHeartbeatStaleTrialCallback."""
        import warnings

        from optuna.exceptions import ExperimentalWarning

        try:
            from optuna.storages import RetryHeartbeatStaleTrialCallback
        except ImportError:  # Optuna before 4.9 named it so
            from optuna.storages import RetryFailedTrialCallback as RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(self.study, self.storage.get_trial(trial_id))

    # --- the tune's own state, for workers that join it

    def set_state(self, state: str) -> None:
        self.study.set_user_attr("coordinator", {"state": state, "beat": time.time(), "by": self.worker})

    def coordinator(self) -> dict:
        return self.storage.get_study_user_attrs(self.id).get("coordinator") or {}

    @contextlib.contextmanager
    def coordinating(self, settings: dict):
        """For the block, this process coordinates the tune: it says so in the study and beats there (workers that
        join read the settings: heartbeat, pruner); at the end, done, which ends the workers."""
        self.study.set_user_attr("settings", settings)
        self.set_state("running")
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(min(self.heartbeat_s, COORDINATOR_STALE_S / 4)):
                with contextlib.suppress(Exception):  # a busy database: the next beat
                    self.set_state("running")

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.set_state("done")

    def running(self) -> bool:
        """Whether a tune coordinates this study now (its coordinator beats and has not ended)."""
        c = self.coordinator()
        return c.get("state") == "running" and time.time() - c.get("beat", 0) < COORDINATOR_STALE_S


def first_rung(max_epochs: int) -> int:
    """The epoch of the pruner's first look: a quarter of the trial, at least its first epoch. A point at a
    larger rate is often behind after one epoch (its warmup, its noisier start) and ahead later; judged at epoch 1
    of 8, 5 of the 8 points of the two searches in issue 19's first acceptance run were stopped there."""
    return max(1, math.ceil(max_epochs / 4))


def make_pruner(name: str, max_epochs: int = 0):
    """The pruner that stops a nuisance search's point far behind the search's others at the same epoch:
    asynchronous successive halving, rungs at first_rung(max_epochs) x 1, 3, 9, ..., each keeping the best third
    (the first point to reach a rung always goes on). Not Hyperband: its brackets read the whole study, where a
    search's points would be compared with other arms' trainings."""
    import optuna

    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(max_epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def delete_study(url: str, name: str) -> None:
    """A tune started afresh (--overwrite) with its study in a database or journal of its own: the old one goes."""
    import optuna

    storage = open_storage(url)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


def serve_dashboard(url: str, port: int, host: str = "127.0.0.1"):
    """optuna-dashboard on the study's storage, served from a thread for as long as this process runs: every
    trial, its parameters, each epoch's validation accuracy, its state. Returns the server (server.shutdown())."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # the tune's console is for the tune
            pass

    server = make_server(host, port, wsgi(open_storage(url)), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
