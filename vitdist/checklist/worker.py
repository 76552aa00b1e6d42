"""A tune's workers: each takes a waiting training from the study, runs it, records how it ended, and takes the
next (`work`). The tune itself is one (in its own process; under `accelerate launch`, every rank runs each
training together); `--workers N` starts N - 1 more on this machine (`start_workers`: the cores, or the GPUs,
split between them: `count_workers`); another machine joins a running tune with the same command and --storage
(`joinable`, `join_tune`). `dashboard` serves the study while the tune runs.

While a training runs, its worker beats, and reads the run's metrics.jsonl as each epoch is written: the epoch's
validation accuracy goes to the study (Optuna's intermediate values: the dashboard's curves), and the pruner
asks whether a prunable training (a nuisance search's point) is far behind the others at this epoch. If so, the
worker stops it as a signal would (the step finishes, a checkpoint is saved, nothing hooks into train()), and
the run folder is marked pruned (pruned.json)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from ..config import UserError, from_dict
from ..stopping import STOP, Interrupted
from .study import TuneStudy
from .trials import is_main, read_trial_log, say, train_trial

PRUNE_SIGNAL = signal.SIGUSR1  # what a pruned training's Interrupted carries: not a signal anybody sent
POLL_S = 0.2  # how often a busy worker looks at its run's log
IDLE_POLL_S = 1.0  # how often an idle one looks for work


def share(obj):
    """Rank 0's obj on every rank (one process: obj itself)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Watch:
    """While a training runs (a thread): the worker's heartbeat, each epoch's validation accuracy reported to the
    study, and, for a prunable training, the pruner's question after each (against the other points of its
    search); `pruned` once it said stop."""

    def __init__(self, study: Optional[TuneStudy], trial_id: Optional[int], run_dir: Path, prunable: bool,
                 group: Optional[str] = None):
        self.study, self.id, self.run_dir, self.prunable, self.group = study, trial_id, run_dir, prunable, group
        self.pruned: Optional[dict] = None
        self.reported: set[int] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def __enter__(self):
        if self.study is not None:
            self.reported = set(self.study.storage.get_trial(self.id).intermediate_values)  # a retry's earlier epochs
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.study is not None:
            self.done.set()
            self.thread.join()
            self.read(judge=False)  # the last epochs, written as the run ended

    def loop(self) -> None:
        last_beat = time.monotonic()
        while not self.done.wait(POLL_S):
            try:  # a storage that does not answer once (a busy database, the network) must not end the beats
                if time.monotonic() - last_beat >= self.study.heartbeat_s:
                    self.study.beat(self.id)
                    last_beat = time.monotonic()
                if self.pruned is None:
                    self.read(judge=True)
            except Exception as e:
                say(f"tune: {self.run_dir}: the study did not answer ({type(e).__name__}: {e}); trying again")

    def read(self, judge: bool) -> None:
        """Report the epochs not reported yet; after each, ask the pruner (judge: while the run goes on)."""
        storage = self.study.storage
        for row in read_trial_log(self.run_dir / "metrics.jsonl"):
            epoch, acc = row.get("epoch"), row.get("val_acc")
            if epoch is None or acc is None or epoch in self.reported:
                continue
            storage.set_trial_intermediate_value(self.id, epoch, float(acc))
            self.reported.add(epoch)
            if not (judge and self.prunable):  # an arm's seed is evidence: never pruned
                continue
            view = SearchView(self.study.study, self.group)  # the points of its own search only
            if self.study.pruner.prune(view, storage.get_trial(self.id)) and STOP.signum is None:
                self.pruned = {"epoch": epoch, "val_acc": acc, "pruner": type(self.study.pruner).__name__}
                STOP.signum = PRUNE_SIGNAL  # the trainer stops at its next step, checkpointing it
                return


def run_one(study: Optional[TuneStudy], trial_id: Optional[int], config: dict, train_fn: Callable) -> None:
    """One training, taken from the study (on rank 0; study None on the other ranks, which train with it)."""
    import optuna

    cfg = from_dict(config)
    run_dir = Path(cfg.run_dir)
    frozen = study.storage.get_trial(trial_id) if study is not None else None
    attrs, trial = (frozen.user_attrs, frozen.number) if frozen is not None else ({}, None)  # tell() takes the number
    watch = Watch(study, trial_id, run_dir, attrs.get("prunable", False), attrs.get("group"))
    start = time.perf_counter()
    results = error = None
    try:
        with watch:
            try:
                if frozen is not None:
                    record_point(study, frozen)
                results, error = train_fn(cfg, resume=True)  # a retried training continues from its checkpoint
            except Interrupted:
                if not share(watch.pruned is not None):
                    give_back(study, trial_id, "interrupted")
                    raise
            except BaseException as e:
                if study is not None:
                    if isinstance(e, Exception):
                        study.storage.set_trial_user_attr(trial_id, "crash", f"{type(e).__name__}: {e}")
                        study.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    else:  # KeyboardInterrupt, SystemExit: the worker stops, the training waits for the next
                        give_back(study, trial_id, type(e).__name__)
                raise
    finally:  # once the watch has stopped: a look it took as the training ended may have asked a prune too late
        if STOP.signum == PRUNE_SIGNAL:
            STOP.signum = None  # the prune's request, not a signal: the next training starts unasked
    if study is None:
        return
    seconds = time.perf_counter() - start
    study.storage.set_trial_user_attr(trial_id, "seconds", seconds)
    if results is not None or error is not None:  # it ended on its own (a prune asked too late is no prune)
        watch.pruned = None
    if watch.pruned is not None:
        (run_dir / "pruned.json").write_text(json.dumps(watch.pruned, indent=2) + "\n")
        study.storage.set_trial_user_attr(trial_id, "pruned", watch.pruned)
        study.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        say(f"tune: {run_dir}: pruned at epoch {watch.pruned['epoch']} (val acc {watch.pruned['val_acc']:.4f}: far "
            f"behind the other points of its search at that epoch)")
    elif results is None:
        study.storage.set_trial_user_attr(trial_id, "error", error)
        study.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        data = run_dir / "data.json"
        num_val = json.loads(data.read_text()).get("num_val", 0) if data.is_file() else 0
        study.storage.set_trial_user_attr(trial_id, "num_val", num_val)
        study.study.tell(trial, float(results["best_val_acc"]))


def record_point(study: TuneStudy, frozen) -> None:
    """A nuisance search's point as the trial's Optuna parameters (the dashboard's columns), set through the plain
    storage: the study's cached one knows only the trials this process made."""
    from optuna.distributions import FloatDistribution

    fixed = frozen.system_attrs.get("fixed_params", {})
    for name, (low, high, log) in (frozen.user_attrs.get("space") or {}).items():
        if name in fixed and name not in frozen.params:
            dist = FloatDistribution(low, high, log=log)
            study.storage.set_trial_param(frozen._trial_id, name, dist.to_internal_repr(fixed[name]), dist)


class SearchView:
    """A nuisance search's trainings as the pruner sees the study: Optuna's pruners compare a training with the
    study's others at the same epoch, and a search's points are to be compared with each other only, not with
    other arms (a deeper model starts slower than the template, whatever its rate)."""

    def __init__(self, study, group: str):
        self._study, self._group = study, group

    def get_trials(self, deepcopy: bool = True, states=None) -> list:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if t.user_attrs.get("group") == self._group]

    def __getattr__(self, name):
        return getattr(self._study, name)


def give_back(study: Optional[TuneStudy], trial_id: Optional[int], why: str) -> None:
    """A training this worker will not finish (a signal stopped it, after its checkpoint): failed, and queued
    again at once for whichever worker comes next (here, or this tune resumed)."""
    if study is None:
        return
    from optuna.trial import TrialState

    study.storage.set_trial_user_attr(trial_id, "stopped", why)
    if study.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
        study.requeue(trial_id, None)


def work(study: Optional[TuneStudy], until: Callable[[], bool], train_fn: Callable) -> None:
    """Take and run waiting trainings until until() says the work is done (rank 0 decides for every rank)."""
    while True:
        step = ("wait",)
        if is_main():
            study.retry_stale(say)
            trial_id = study.take()
            if trial_id is not None:
                step = ("run", trial_id, study.storage.get_trial(trial_id).user_attrs["config"])
            elif until():
                step = ("done",)
        step = share(step)
        if step[0] == "done":
            return
        if step[0] == "wait":
            time.sleep(IDLE_POLL_S)
            continue
        run_one(study if is_main() else None, step[1], step[2], train_fn)


# --- more workers: on this machine, or joining from another


def worker_env(index: int, workers: int) -> dict:
    """A local worker's environment: its share of the GPUs (round robin: --trials-per-gpu K packs K on each),
    or on a CPU its share of the cores."""
    import torch

    env = dict(os.environ)
    env.pop("RANK", None)
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = str(index % torch.cuda.device_count())
    else:
        env["OMP_NUM_THREADS"] = str(max((os.cpu_count() or 1) // workers, 1))
    return env


@contextlib.contextmanager
def start_workers(study: TuneStudy, workers: int, log_dir: Path, ending: bool = True):
    """workers - 1 worker processes beside this one for the block (this process is the first): each writes its
    console to log_dir/worker_N.log. At the end (`ending`: this process coordinates the tune) they are told the
    tune is done, and waited for."""
    import torch

    procs = []
    if workers > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max((os.cpu_count() or 1) // workers, 1))  # this process's share of the cores
    log_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, workers):
        with open(log_dir / f"worker_{i}.log", "ab") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "vitdist.checklist.worker", study.url, study.name],
                                          env=worker_env(i, workers), stdout=log, stderr=subprocess.STDOUT))
    if procs:
        say(f"tune: {len(procs)} more worker(s) on this machine (logs: {log_dir}/worker_N.log)")
    try:
        yield procs
    finally:
        if ending:
            study.set_state("done")
        for p in procs:  # told by the study's state (the tune sets it on its way out); a stuck one is stopped
            try:
                p.wait(timeout=60 + 3 * study.heartbeat_s)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait()


def join(study: TuneStudy, train_fn: Callable) -> None:
    """This process as one more worker of a tune coordinated elsewhere, until that tune ends (or stops beating
    and leaves nothing waiting)."""
    from optuna.trial import TrialState

    def over() -> bool:
        return not study.running() and not study.trials(states=(TrialState.WAITING,))

    say(f"tune: joining the running tune in study {study.name!r} ({study.url}) as a worker")
    work(study, over, train_fn)


# --- the tune's side: how many workers here, joining a running tune, the dashboard


def count_workers(args) -> int:
    """Trainings at once on this machine: --workers, or one per GPU (times --trials-per-gpu), or 1 on a CPU.
    Under accelerate launch every rank runs each training together: one at a time."""
    import torch

    if args.workers < 0 or args.trials_per_gpu < 1 or args.nuisance_trials < 0 or args.heartbeat_seconds <= 0:
        raise UserError(f"--workers must be >= 0, --trials-per-gpu >= 1, --nuisance-trials >= 0 and "
                        f"--heartbeat-seconds > 0; got {args.workers}, {args.trials_per_gpu}, {args.nuisance_trials} "
                        f"and {args.heartbeat_seconds:g}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if args.workers > 1:
            raise UserError(f"--workers {args.workers} under accelerate launch: there, every process runs each "
                            f"training together; run `vitdist tune --workers {args.workers}` without the launcher "
                            f"to train {args.workers} trials at once")
        return 1
    if args.workers:
        return args.workers
    return torch.cuda.device_count() * args.trials_per_gpu if torch.cuda.is_available() else 1


def joinable(url: str, name: str, args) -> bool:
    """Whether a tune of this study is running now, coordinated by another process (here: one that is alive)."""
    import socket

    from .study import STUDY_FILE

    if args.storage is None and not (Path(args.tune_dir) / STUDY_FILE).is_file():
        return False
    try:
        study = TuneStudy(url, name)
    except Exception:  # not a study of ours (an older tune folder): the folder check says what it is
        return False
    if not study.running():
        return False
    host, _, pid = study.coordinator().get("by", "").rpartition(":")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except (OSError, ValueError):
            return False  # its coordinator on this machine is gone: the tune is to be resumed, not joined
    return True


JOIN_WAIT_S = 900.0  # --join waits this long for the tune to start (its check and sweep come first)


def join_tune(args, url: str, name: str, workers: int) -> dict:
    """This machine's workers (this process and workers - 1 more) join the running tune of the study, until it
    ends. With --join, wait for it to start first."""
    import socket

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--join under accelerate launch: a joining machine runs one training per worker; run "
                        "`vitdist tune --join ...` without the launcher")
    waited = time.monotonic()
    while not joinable(url, name, args):
        if not args.join or time.monotonic() - waited > JOIN_WAIT_S:
            raise UserError(f"--join: no tune of study {name!r} has been running in {url} for "
                            f"{JOIN_WAIT_S / 60:.0f} minutes: start it first (the same command without --join)")
        time.sleep(5)
    study = TuneStudy(url, name)
    study = TuneStudy(url, name, **study.storage.get_study_user_attrs(study.id).get("settings", {}))
    with start_workers(study, workers, Path(args.tune_dir) / "workers" / socket.gethostname(), ending=False):
        join(study, train_trial)
    return {"joined": name}


@contextlib.contextmanager
def dashboard(args, url: str):
    """With --dashboard, optuna-dashboard serving the study for the block (rank 0)."""
    if not (args.dashboard and is_main()):
        yield
        return
    from .study import serve_dashboard

    server = serve_dashboard(url, args.dashboard_port)
    say(f"tune: the study's dashboard: http://127.0.0.1:{args.dashboard_port}/ (while the tune runs; after it: "
        f"optuna-dashboard {url})")
    try:
        yield
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    """python -m vitdist.checklist.worker URL STUDY: one local worker, started by the tune."""
    url, name = (sys.argv[1:] if argv is None else argv)[:2]
    probe = TuneStudy(url, name)
    settings = probe.storage.get_study_user_attrs(probe.id).get("settings", {})
    study = TuneStudy(url, name, **settings)
    with STOP.installed():
        try:
            join(study, train_trial)
        except Interrupted as e:
            return e.exit_code
        except Exception:  # a training that crashed is recorded in the study, and the tune says so: the next
            traceback.print_exc()
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
