"""Issue 19: Optuna under `vitdist tune`. Worker processes share one study (SQLite, a journal file, a real
PostgreSQL server) and run each training once; a worker SIGKILLed mid-training is retried by another and the
run ends as an unbroken one would; the pruner stops a bad training at the first rung; the dashboard's server
answers with the study; a killed tune resumed reruns nothing finished. Every figure is checked against the run
folders' own files (results.json, metrics.jsonl), not against what the study was told."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import REPO, run_cli, tiny_config
from vitdist.checklist.study import TuneStudy
from vitdist.checklist.tuner import as_json
from vitdist.config import to_dict


def queue(study: TuneStudy, root: Path, n: int, points: bool = False, **kw) -> list[Path]:
    """n tiny trainings (seeds 0..n-1) queued in the study; their run folders. points: as the points of a rate
    search (each its own rate, an Optuna parameter)."""
    folders = []
    for seed in range(n):
        cfg = tiny_config(root / f"run_{seed}", seed=seed, **kw)
        extra = {}
        if points:
            cfg = replace(cfg, optim=replace(cfg.optim, lr=1e-3 * (1 + seed / 10)))
            extra = {"space": {"lr": (1e-4, 1e-2, True)}, "params": {"lr": cfg.optim.lr}, "group": "search"}
        study.ensure(cfg.run_dir, as_json(to_dict(cfg)), arm="planted", seed=seed, **extra)
        folders.append(Path(cfg.run_dir))
    return folders


def start_worker(url: str, name: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "vitdist.checklist.worker", url, name], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def work_until_complete(study: TuneStudy, log: Path, what: str) -> None:
    """One worker process on the study until a training there is COMPLETE; then the study is done and the worker
    has ended."""
    worker = start_worker(study.url, study.name, log)
    try:
        wait_for(lambda: study.trials(states=(TrialState.COMPLETE,)), 240, what)
    finally:
        study.set_state("done")
        worker.wait(timeout=60)


def best_val_acc(folder: Path) -> float:
    """From the run's own log: the best epoch's validation accuracy."""
    return max(json.loads(line)["val_acc"] for line in (folder / "metrics.jsonl").read_text().splitlines())


def check_two_workers_share(url: str, tmp_path: Path) -> None:
    study = TuneStudy(url, "shared", heartbeat_s=2.0)
    study.study.set_user_attr("settings", {"heartbeat_s": 2.0})
    folders = queue(study, tmp_path / "runs", 6, points=True)  # a rate search's points, each an Optuna parameter
    study.set_state("running")
    workers = [start_worker(url, "shared", tmp_path / f"w{i}.log") for i in range(2)]
    try:
        wait_for(lambda: len(study.trials(states=(TrialState.COMPLETE,))) == 6, 240, "six trainings")
    finally:
        study.set_state("done")  # the workers end once nothing waits
        codes = [w.wait(timeout=60) for w in workers]
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    trials = study.trials()
    assert len(trials) == 6 and {t.state for t in trials} == {TrialState.COMPLETE}  # none queued twice, none lost
    runs = sorted(t.user_attrs["run_dir"] for t in trials)
    assert runs == sorted(map(str, folders))  # each training recorded once
    for t in trials:  # the value the study holds is the run's own best, every epoch's accuracy reported
        folder = Path(t.user_attrs["run_dir"])
        assert t.value == pytest.approx(best_val_acc(folder))
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert t.intermediate_values == {r["epoch"]: pytest.approx(r["val_acc"]) for r in rows}
        assert (folder / "results.json").is_file() and "config.json" in os.listdir(folder)
        ran = json.loads((folder / "config.json").read_text())["optim"]["lr"]
        assert t.params == {"lr": pytest.approx(ran)}  # the point the run trained with, in whichever worker
    # each training ran once: one header line per run, across both workers' consoles
    headers = sum(log.count("parameters; synthetic") for log in logs)
    assert headers == 6, logs
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took work


def test_two_workers_share_one_sqlite_study(tmp_path):
    check_two_workers_share(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)


def test_two_workers_share_one_journal_study(tmp_path):
    check_two_workers_share(f"journal:{tmp_path / 'shared' / 'study.log'}", tmp_path)


def test_racing_workers_never_take_one_training_twice(tmp_path):
    """Four processes take from 80 queued trainings as fast as they can, all starting at once: each training is
    taken exactly once. (With SQLite's default deferred transactions, 60 trainings were taken 62-74 times.)"""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = TuneStudy(url, "race")
    for i in range(80):
        study.study.enqueue_trial({}, user_attrs={"key": str(i)})
    start = time.time() + 5  # after every process has imported and opened the study
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "take_race.py"), url, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-2000:] for _, e in outs]
    taken = [i for out, _ in outs for i in json.loads(out.strip().splitlines()[-1])]
    assert sorted(taken) == sorted(t._trial_id for t in study.trials())  # each once, none left
    assert {t.state for t in study.trials()} == {TrialState.RUNNING}


def postgres_server(tmp_path: Path) -> tuple[str, list[str]]:
    """A PostgreSQL server of the test's own (Debian's package: initdb, pg_ctl), on a socket of its own: its URL
    and the command that stops it. Skips, saying why, where it cannot start."""
    import tempfile

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    pg_ctl = shutil.which("pg_ctl") or (str(bins[-1]) if bins else None)
    if pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian's postgresql package: .ci/run installs it where it can)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2-binary (the dev extra) is not installed")
    bin_dir = Path(os.path.realpath(pg_ctl)).parent
    root = Path(tempfile.mkdtemp(prefix="vdpg", dir="/tmp"))  # short (a socket's path is at most 107 bytes)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as = []
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the package's own user
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        run_as = ["runuser", "-u", "postgres", "--"]
        for p in (root, sock):
            os.chmod(p, 0o777)
    port = free_port()
    init = subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "vitdist"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb could not make a cluster: {init.stderr.strip()[-300:]}")
    start = subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
                            str(root / "log"), "-o", f"-k {sock} -p {port} -c listen_addresses=''", "start"],
                           capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"the PostgreSQL server did not start: {start.stderr.strip()[-300:]}")
    stop = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
    return f"postgresql+psycopg2://vitdist@/postgres?host={sock}&port={port}", stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_share_one_postgresql_study(tmp_path):
    url, stop = postgres_server(tmp_path)
    try:
        check_two_workers_share(url, tmp_path)
    finally:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(Path(stop[-4]).parent, ignore_errors=True)


def test_a_worker_killed_mid_training_is_retried_by_another_and_the_run_ends_as_an_unbroken_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = TuneStudy(url, "kill", heartbeat_s=0.5)
    study.study.set_user_attr("settings", {"heartbeat_s": 0.5})
    (folder,) = queue(study, tmp_path / "runs", 1, epochs=4, data={"synthetic_size": 1200})
    study.set_state("running")
    first = start_worker(url, "kill", tmp_path / "w1.log")
    wait_for(lambda: (folder / "metrics.jsonl").is_file() and
             len((folder / "metrics.jsonl").read_text().splitlines()) >= 2, 240, "two epochs")
    first.send_signal(signal.SIGKILL)  # no checkpoint of its step, no goodbye: its heartbeat just stops
    first.wait()
    assert study.trials()[0].state == TrialState.RUNNING
    work_until_complete(study, tmp_path / "w2.log", "the retry")
    log = (tmp_path / "w2.log").read_text()
    killed, retried = study.trials()
    assert killed.state == TrialState.FAIL and retried.state == TrialState.COMPLETE, log
    assert retried.system_attrs["failed_trial"] == killed.number
    assert retried.user_attrs["worker"] != killed.user_attrs["worker"]
    # The same records as a run never killed (trained by a worker too: the same threads, the same sums): the
    # retry continued from the last epoch's checkpoint.
    unbroken = TuneStudy(url, "unbroken", heartbeat_s=0.5)
    (straight,) = queue(unbroken, tmp_path / "straight", 1, epochs=4, data={"synthetic_size": 1200})
    unbroken.set_state("running")
    work_until_complete(unbroken, tmp_path / "w3.log", "the unbroken run")
    strip = lambda f: [{k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k  # noqa: E731
                        and "tflops" not in k} for line in (f / "metrics.jsonl").read_text().splitlines()]
    assert len(strip(folder)) == 4 and strip(folder) == strip(straight)
    assert retried.value == best_val_acc(straight)
    assert "queued again" in log and "resumed from" in log, log


def test_trials_per_gpu_packs_k_trainings_on_each_gpu_and_a_cpu_splits_its_cores(monkeypatch):
    """On 4 GPUs with --trials-per-gpu 2 the tune runs 8 trainings at once: this process on GPU 0 (it sees them
    all and trains on the first), each of the 7 workers on the one GPU its CUDA_VISIBLE_DEVICES names, so every
    GPU holds exactly 2. On a 16-core CPU, --workers 4 gives each of the 4 processes 4 threads. Under
    accelerate launch every rank trains each training together: one at a time, and --workers 2 is refused."""
    from collections import Counter
    from types import SimpleNamespace

    import torch

    from vitdist.checklist.worker import count_workers, worker_env
    from vitdist.config import UserError

    args = SimpleNamespace(workers=0, trials_per_gpu=2, nuisance_trials=4, heartbeat_seconds=10.0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    n = count_workers(args)
    assert n == 8
    gpus = Counter(["0"] + [worker_env(i, n)["CUDA_VISIBLE_DEVICES"] for i in range(1, n)])
    assert gpus == {"0": 2, "1": 2, "2": 2, "3": 2}
    assert count_workers(SimpleNamespace(**{**vars(args), "trials_per_gpu": 1})) == 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert count_workers(args) == 1  # a CPU: one at a time unless --workers says
    four = SimpleNamespace(**{**vars(args), "workers": 4})
    assert count_workers(four) == 4
    assert {worker_env(i, 4)["OMP_NUM_THREADS"] for i in range(1, 4)} == {"4"}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert count_workers(args) == 1
    with pytest.raises(UserError, match="under accelerate launch"):
        count_workers(SimpleNamespace(**{**vars(args), "workers": 2}))
    with pytest.raises(UserError, match="--trials-per-gpu >= 1"):
        count_workers(SimpleNamespace(**{**vars(args), "trials_per_gpu": 0}))


def test_a_training_is_retried_after_three_silent_beats_and_given_up_after_three_retries(tmp_path, monkeypatch):
    """Beats every 10 s: a worker silent for 29 s is alive (its training stays RUNNING); at 31 s it is taken for
    dead, its training FAILed and queued again as a new trial with the same folder, config and retry history.
    The fourth death ends the training for good, saying so (the tune stops on it); nothing is queued again. The
    study's clock is moved by hand, not slept."""
    from types import SimpleNamespace

    import vitdist.checklist.study as study_mod

    clock = [time.time()]
    monkeypatch.setattr(study_mod, "time", SimpleNamespace(time=lambda: clock[0], sleep=time.sleep,
                                                           monotonic=time.monotonic, perf_counter=time.perf_counter))
    study = TuneStudy(f"sqlite:///{tmp_path / 'study.db'}", "beats", heartbeat_s=10.0)
    (folder,) = queue(study, tmp_path / "runs", 1)
    said = []
    for death in range(1, 5):
        taken = study.take()
        assert taken is not None and study.storage.get_trial(taken).state == TrialState.RUNNING
        clock[0] += 29.0
        assert study.retry_stale(say=said.append) == [] and study.storage.get_trial(taken).state == \
            TrialState.RUNNING
        clock[0] += 2.0
        dead = study.storage.get_trial(taken)
        retried = study.retry_stale(say=said.append)
        assert study.storage.get_trial(taken).state == TrialState.FAIL
        waiting = study.trials(states=(TrialState.WAITING,))
        if death <= 3:
            assert retried == [dead.number] and len(waiting) == 1 and len(said) == death
            (new,) = waiting
            assert new.user_attrs["run_dir"] == str(folder) and new.user_attrs["key"] == dead.user_attrs["key"]
            assert new.user_attrs["config"] == dead.user_attrs["config"]
            assert len(new.system_attrs["retry_history"]) == death
        else:
            assert retried == [] and waiting == []
            assert "died 4 times" in study.storage.get_trial(taken).user_attrs["crash"]
            assert study.finished(dead.user_attrs["key"]).number == dead.number  # ended for good
    assert len(study.trials()) == 4


def test_a_training_that_crashes_in_a_worker_stops_the_tune_with_its_error(tmp_path, monkeypatch):
    """A worker whose training raises (here: its data folder is missing) records the error in the study, prints
    its traceback and exits 1; the tune waiting on that training stops with a UserError that names the error and
    where the traceback is, never a traceback of its own. (The tune itself only waits here, as it does while the
    other workers hold every queued training.)"""
    from vitdist.checklist import tuner as tuner_mod
    from vitdist.checklist.tune import TuneArgs
    from vitdist.config import UserError

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = TuneStudy(url, "crash")
    study.set_state("running")
    missing = tmp_path / "no-such-data"
    cfg = tiny_config(tmp_path / "unused", data={"name": "imagefolder", "root": str(missing)})
    worker = start_worker(url, "crash", tmp_path / "w.log")
    monkeypatch.setattr(tuner_mod, "work", lambda study, until, train: wait_for(until, 120, "the worker's crash"))
    args = TuneArgs(train=cfg, tune_dir=str(tmp_path / "tune"), seeds=1, confirm_seeds=0, nuisance_trials=0)
    try:
        with pytest.raises(UserError) as e:
            tuner_mod.Tuner(args, study, workers=2).run("trial_000", "the template", "", cfg)
        code = worker.wait(timeout=60)
    finally:
        study.set_state("done")
    log = (tmp_path / "w.log").read_text()
    (trial,) = study.trials()
    assert code == 1 and "Traceback" in log and str(missing) in log, log
    assert trial.state == TrialState.FAIL and str(missing) in trial.user_attrs["crash"]
    assert trial.user_attrs["run_dir"] == str(tmp_path / "tune" / "trial_000")
    assert "failed in a worker" in str(e.value) and str(missing) in str(e.value)
    assert f"{tmp_path / 'tune'}/workers/" in str(e.value)  # where the worker's traceback is


def planted_competitors(study: TuneStudy, acc: float, n: int = 3, group: str = "search") -> None:
    """n finished trainings of a search that reached acc at epochs 1 and 2 (epoch 2: their first rung, as the
    pruner recorded it)."""
    for i in range(n):
        study.study.add_trial(optuna.trial.create_trial(
            value=acc, intermediate_values={1: acc, 2: acc}, system_attrs={"completed_rung_0": acc},
            user_attrs={"key": f"planted-{i}", "run_dir": f"p{i}", "group": group}))


@pytest.mark.parametrize("case", ["a point of the search", "an arm's seed", "a point of another search"])
def test_the_pruner_stops_a_bad_point_at_the_first_rung_against_its_own_search_only(tmp_path, case):
    """Three points of a search reached 0.95 by epoch 2, the first rung of 6-epoch trials (a quarter of the
    trial, rounded up: no point is judged in its first epoch); a training at a rate too small to learn is near
    chance there. As a point of that search (prunable) it is stopped in its third epoch and its folder marked; as
    an arm's seed (not prunable), or as the first point of another search, it runs to its end."""
    from vitdist.checklist.trials import train_trial
    from vitdist.checklist.worker import work

    study = TuneStudy(f"sqlite:///{tmp_path / 'study.db'}", "prune", heartbeat_s=5.0, max_epochs=6)
    planted_competitors(study, 0.95)
    cfg = tiny_config(tmp_path / "bad", epochs=6, data={"synthetic_size": 3000}, optim={"lr": 1e-7, "min_lr": 0.0})
    study.ensure(cfg.run_dir, as_json(to_dict(cfg)), seed=0, prunable=case != "an arm's seed",
                 group="other" if case == "a point of another search" else "search")
    work(study, lambda: all(t.state != TrialState.WAITING and t.state != TrialState.RUNNING for t in study.trials()),
         train_trial)
    (trial,) = [t for t in study.trials() if t.user_attrs.get("run_dir") == cfg.run_dir]
    epochs = [json.loads(line)["epoch"] for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    if case == "a point of the search":
        # judged at epoch 2, stopped at the next step the trainer takes after the worker's look at its log
        assert trial.state == TrialState.PRUNED and epochs in ([1, 2], [1, 2, 3])
        marked = json.loads((Path(cfg.run_dir) / "pruned.json").read_text())
        rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert marked["epoch"] == 2 and marked["val_acc"] == rows[1]["val_acc"] < 0.5
        assert trial.intermediate_values[2] == marked["val_acc"]
    else:
        assert trial.state == TrialState.COMPLETE and epochs == [1, 2, 3, 4, 5, 6]
        assert not (Path(cfg.run_dir) / "pruned.json").exists()
        assert sorted(trial.intermediate_values) == epochs  # every epoch reported all the same
    from vitdist.stopping import STOP

    assert STOP.signum is None  # the prune's request does not outlive its training


def test_a_prune_asked_as_the_training_ends_does_not_stop_the_next(tmp_path, monkeypatch):
    """The watch's last look, taken as the training returned, finds the point far behind and asks for a prune:
    too late to stop anything, so the training is COMPLETE and the request is gone before the next training
    starts. (The request outlived its training once in a clean-clone CI run: the next arm's seed stopped at
    step 1 on SIGUSR1.) The late look is made certain here by taking it in the watch's exit."""
    from vitdist.checklist import worker as worker_mod
    from vitdist.stopping import STOP

    study = TuneStudy(f"sqlite:///{tmp_path / 'study.db'}", "late", heartbeat_s=5.0, max_epochs=4)
    planted_competitors(study, 0.95)
    cfg = tiny_config(tmp_path / "point")
    study.ensure(cfg.run_dir, as_json(to_dict(cfg)), seed=0, prunable=True, group="search")
    real_exit = worker_mod.Watch.__exit__

    def late_look(self, *exc):
        self.read(judge=True)  # the thread's look, after the training returned
        return real_exit(self, *exc)

    monkeypatch.setattr(worker_mod.Watch, "__exit__", late_look)

    def trains(cfg, resume=False):
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.1}) + "\n")
        return {"best_val_acc": 0.1}, None

    trial_id = study.take()
    try:
        worker_mod.run_one(study, trial_id, study.storage.get_trial(trial_id).user_attrs["config"], trains)
        assert STOP.signum is None  # the next training starts unasked
    finally:
        STOP.signum = None
    trial = study.storage.get_trial(trial_id)
    assert trial.state == TrialState.COMPLETE and trial.value == 0.1  # a prune asked too late is no prune
    assert not (Path(cfg.run_dir) / "pruned.json").exists()


def test_the_dashboard_answers_with_the_study(tmp_path):
    from vitdist.checklist.study import serve_dashboard

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = TuneStudy(url, "vitdist-dash")
    planted_competitors(study, 0.7, n=2)
    port = free_port()
    server = serve_dashboard(url, port)
    try:
        studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30).read())
        (summary,) = studies["study_summaries"]
        assert summary["study_name"] == "vitdist-dash"
        detail = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}",
                                                   timeout=30).read())
        assert [t["values"] for t in detail["trials"]] == [[0.7], [0.7]]
        assert [t["intermediate_values"] for t in detail["trials"]] == [[{"step": 1, "value": 0.7},
                                                                         {"step": 2, "value": 0.7}]] * 2
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=30).read()
        assert b"<html" in page.lower()
    finally:
        server.shutdown()


TUNE_FLAGS = ["--data.name", "synthetic", "--data.synthetic-size", "640", "--data.val-fraction", "0.2",
              "--data.train-eval-size", "64", "--model.embed-dim", "32", "--model.num-layers", "1",
              "--model.num-heads", "2", "--model.dim-feedforward", "64", "--batch.global-batch-size", "32",
              "--epochs", "3", "--optim.warmup-epochs", "0.3", "--log.no-tensorboard", "--log.no-progress",
              "--budget-trials", "9", "--sweep-epochs", "1", "--lrs", "1e-3", "--seeds", "2", "--confirm-seeds", "1",
              "--nuisance-trials", "0", "--heartbeat-seconds", "0.5"]


def test_a_killed_tune_resumed_reruns_nothing_finished(tmp_path):
    """SIGKILL the tune (no checkpoint, its training left RUNNING in the study) as its second arm starts; --resume
    auto retries that training from its checkpoint, reads the finished ones back, and ends as an unbroken tune.
    The tune was started with --overwrite and continued without it, as the tune's own continue command says."""
    folder = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "vitdist", "tune", *TUNE_FLAGS, "--tune-dir", str(folder),
                             "--overwrite"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (folder / "trial_001" / "seed_0" / "metrics.jsonl").is_file(), 300, "the second arm")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = {p: p.stat().st_mtime_ns for p in folder.glob("trial_000/seed_*/results.json")}
    assert len(finished) == 2
    resumed = run_cli("tune", *TUNE_FLAGS, "--tune-dir", folder, "--resume", "auto", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # read back, not rerun
    assert "tune trial_000: the template, as given: read back" in resumed.stdout
    study = optuna.load_study(study_name="vitdist-t", storage=f"sqlite:///{folder / 'study.db'}")
    retried = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["run_dir"] for t in retried] == [str(folder / "trial_001" / "seed_0")]
    straight = run_cli("tune", *TUNE_FLAGS, "--tune-dir", tmp_path / "s", timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = (json.loads((f / "tune.json").read_text()) for f in (folder, tmp_path / "s"))
    strip = lambda r: [(d["step"], d["what"], d["result"], d.get("val_acc")) for d in r["decisions"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert [t["accs"] for t in a["trials"]] == [t["accs"] for t in b["trials"]]


def test_a_slurm_array_task_joins_task_0s_tune(tmp_path):
    """launch/slurm_tune.sbatch as two array tasks (two machines, here two processes) sharing a journal study: task
    1 starts first and waits (--join), task 0 runs the tune, both train; every training runs once."""
    wrapper = tmp_path / "vitdist"
    wrapper.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -m vitdist \"$@\"\n")
    wrapper.chmod(0o755)
    script = str(REPO / "launch" / "slurm_tune.sbatch")
    # trainings of a few seconds, so that task 0 (which also trains) cannot take every queued seed before the
    # joiner's next look: at 640 images the joiner trained nothing in 3 of 4 runs on a slow day
    sized = [("1600" if before == "--data.synthetic-size" else f) for before, f in zip(["", *TUNE_FLAGS], TUNE_FLAGS)]
    flags = [*sized, "--tune-dir", str(tmp_path / "t"), "--storage", f"journal:{tmp_path / 'study.log'}"]
    env = {**os.environ, "VITDIST": str(wrapper), "SLURM_SUBMIT_DIR": str(REPO), "OMP_NUM_THREADS": "1"}
    joiner = subprocess.Popen(["bash", script, *flags], env={**env, "SLURM_ARRAY_TASK_ID": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = subprocess.run(["bash", script, *flags], env={**env, "SLURM_ARRAY_TASK_ID": "0"}, capture_output=True,
                           text=True, timeout=600)
    joined, _ = joiner.communicate(timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert joiner.returncode == 0, joined[-3000:]
    assert "--resume auto" in first.stderr.splitlines()[0] and "--join" in joined.splitlines()[0]
    assert "joining the running tune in study 'vitdist-t'" in joined
    study = TuneStudy(f"journal:{tmp_path / 'study.log'}", "vitdist-t")
    trials = study.trials()
    runs = [t.user_attrs["run_dir"] for t in trials]
    assert len(runs) == len(set(runs)) and {t.state for t in trials} == {TrialState.COMPLETE}
    record = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert sorted(runs) == sorted(str(Path(t["run_dir"]).parent / f"seed_{s}") if len(t["seeds"]) > 1 else
                                  t["run_dir"] for t in record["trials"] for s in t["seeds"])
    by_joiner = [t for t in trials if t.user_attrs["worker"].endswith(f":{joiner.pid}")]
    assert by_joiner, "the joining task trained nothing:\n" + joined[-3000:]
    for t in by_joiner:  # what the joiner recorded is what its runs wrote
        assert t.value == pytest.approx(best_val_acc(Path(t.user_attrs["run_dir"])))
    refused = subprocess.run(["bash", script, *TUNE_FLAGS], env={**env, "SLURM_ARRAY_TASK_ID": "0"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "give --storage" in refused.stderr
