"""What the tune's headline leaves out, measured on its own fresh seeds: after a `vitdist tune` (the acceptance run of
bench/cifar10_tune_workers.sh), train on the confirmation's seeds
  - the template as the user gave it (the tune's headline compares with the template whose warmup it fixed first),
  - the winner made wider (the change the tune skipped for time: embed_dim x2, the MLP ratio kept, the winner's
    rate, not searched again),
two trainings at a time (one thread each, as the tune's 2 workers), and print them beside the tune's own
confirmation numbers (read from its tune.json), with the paired differences. Usage:

    python bench/cifar10_tune_gap.py TUNE_DIR [OUT_DIR]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

WORKERS = 2


def train_one(config_json: str) -> None:
    """One training from a config.json, as a tune's worker trains it (no test split); prints its best val acc."""
    from vitdist.checklist.trials import train_trial
    from vitdist.train.record import read_config

    cfg, _ = read_config(Path(config_json))
    results, error = train_trial(cfg)
    print(json.dumps({"best_val_acc": results["best_val_acc"] if results else None, "error": error}))


def wider(cfg):
    """cfg with the checklist's "a wider model" change, the very flags the tune's advice gives (advice._resize)."""
    from vitdist.checklist.advice import _resize
    from vitdist.checklist.tune import apply_flags
    from vitdist.config import to_dict

    model = to_dict(cfg)["model"]
    return apply_flags(cfg, _resize(model, embed=2 * model["embed_dim"]))


def main() -> None:
    from vitdist.config import from_dict, to_dict
    from vitdist.train.record import read_config

    tune_dir = Path(sys.argv[1])
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/cifar10-tune-gap")
    record = json.loads((tune_dir / "tune.json").read_text())
    confirmed = record["summary"]["confirmed"]
    seeds = confirmed["seeds"]
    best_dir = tune_dir / ("confirm_best" if (tune_dir / "confirm_best").is_dir() else "confirm_template")
    given = from_dict(record["template"])
    jobs = []
    for seed in seeds:
        winner, _ = read_config(best_dir / f"seed_{seed}" / "config.json")
        jobs.append(("template as given", seed, replace(given, seed=seed, resume=None,
                                                        run_dir=str(out / "given" / f"seed_{seed}"))))
        jobs.append(("tuned, wider", seed, replace(wider(winner), resume=None,
                                                   run_dir=str(out / "wider" / f"seed_{seed}"))))
    jobs.sort(key=lambda j: j[0] != "tuned, wider")  # the long ones first
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(job):
        what, seed, cfg = job
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        path = Path(cfg.run_dir).parent / f"seed_{seed}.config.json"
        path.write_text(json.dumps(to_dict(cfg), indent=2))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--one", str(path)], env=env, capture_output=True,
                              text=True)
        (Path(cfg.run_dir).parent / f"seed_{seed}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{what} seed {seed} failed:\n{done.stderr[-2000:]}")
        acc = json.loads(done.stdout.strip().splitlines()[-1])["best_val_acc"]
        print(f"{what:18s} seed {seed}: val {acc:.4f} ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
        return what, seed, acc

    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        got = list(pool.map(run, jobs))
    rows = {"template, its warmup fixed (the tune's)": confirmed["template"]["accs"],
            "tuned (the tune's winner)": confirmed["best"]["accs"]}
    for what in ("template as given", "tuned, wider"):
        rows[what] = [next(acc for w, s, acc in got if w == what and s == seed) for seed in seeds]
    print(f"\nseeds {', '.join(map(str, seeds))}; {(time.perf_counter() - t0) / 60:.1f} min on {WORKERS} processes")
    print("| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | paired vs the fixed template |")
    print("|---|" + "---|" * (len(seeds) + 2))
    base = rows["template, its warmup fixed (the tune's)"]
    for what, accs in rows.items():
        diffs = [a - b for a, b in zip(accs, base)]
        print(f"| {what} | " + " | ".join(f"{a:.4f}" for a in accs) +
              f" | {statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f} | "
              f"{statistics.mean(diffs):+.4f} ({', '.join(f'{d:+.4f}' for d in diffs)}) |")
    (out / "gap.json").write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        train_one(sys.argv[2])
    else:
        main()
