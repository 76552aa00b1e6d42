"""TensorBoard logging: what the event files hold is what metrics.jsonl, steps.jsonl and results.json say."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_config
from vitdist.train import train


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_tensorboard_holds_every_epoch_metric_and_every_step(tmp_path, one_thread):
    """Each epoch's metrics at that epoch's last step, step/loss, step/lr and step/grad_norm at every optimizer
    step, final/* at the last step: the same values as the run's own records (float32 in the event file)."""
    cfg = tiny_config(tmp_path / "run", log={"tensorboard": True})
    results = train(cfg)
    run_dir, tracker_dir = tmp_path / "run", tmp_path / "run" / "tensorboard" / cfg.log.wandb_project
    assert len(list(tracker_dir.glob("events.out.tfevents.*"))) == 1  # beside the hparams' own folder
    events = EventAccumulator(str(tracker_dir), size_guidance={"scalars": 0})
    events.Reload()

    def scalars(tag: str) -> dict[int, float]:
        found = events.Scalars(tag)
        steps = [e.step for e in found]
        assert len(set(steps)) == len(steps), (tag, steps)  # one value per step
        return {e.step: e.value for e in found}

    epochs = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["epoch"] for m in epochs] == [1, 2]
    for name in epochs[0]:
        logged = {m["step"]: m[name] for m in epochs if m[name] is not None}
        if not logged:  # mfu on a CPU: no peak, no value, no scalar
            assert name not in events.Tags()["scalars"], name
            continue
        assert scalars(name) == pytest.approx(logged, rel=1e-6), name
    steps = read_jsonl(run_dir / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, epochs[-1]["step"] + 1))
    for name in ("loss", "lr", "grad_norm"):
        assert scalars(f"step/{name}") == pytest.approx({s["step"]: s[name] for s in steps}, rel=1e-6), name
    for name, value in results.items():
        if isinstance(value, str):  # "weights": a name, which TensorBoard's scalars cannot hold
            continue
        assert scalars(f"final/{name}") == pytest.approx({results["steps"]: float(value)}, rel=1e-6), name


@pytest.mark.parametrize("every_steps", [1000, 4])
def test_tensorboard_is_flushed_once_per_read_not_once_per_step(tmp_path, monkeypatch, one_thread, every_steps):
    """accelerate's log() flushes TensorBoard's event file at every call: one call per step would flush per step.
    Reading every 1000 steps (each epoch's end), a run with twice the steps per epoch flushes as often; every 4
    steps, the flushes follow the reads."""
    from torch.utils.tensorboard import SummaryWriter

    real_flush = SummaryWriter.flush
    flushes = []

    def flush(self):
        flushes.append(1)
        real_flush(self)

    monkeypatch.setattr(SummaryWriter, "flush", flush)
    counts = {}
    for size in (320, 640):  # 8 and 16 steps an epoch, 2 epochs
        flushes.clear()
        train(tiny_config(tmp_path / str(size), data={"synthetic_size": size},
                          log={"tensorboard": True, "every_steps": every_steps}))
        assert len(read_jsonl(tmp_path / str(size) / "steps.jsonl")) == size // 20  # every step still logged
        counts[size] = len(flushes)
    if every_steps == 1000:
        assert counts[320] == counts[640] < 16, counts
    else:  # 2 more reads an epoch at 16 steps than at 8: 4 more flushes in all
        assert counts[640] - counts[320] == 4, counts
