"""Issue 10: progress you can see. A live bar at a terminal (tested in a pty), plain lines elsewhere, never a
carriage return in a log file; the table's header before the first epoch ends."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest

from conftest import REPO

FLAGS = ["--data.name", "synthetic", "--data.synthetic-size", "400", "--data.val-fraction", "0.2",
         "--model.embed-dim", "32", "--model.num-layers", "1", "--model.num-heads", "2", "--model.dim-feedforward",
         "64", "--batch.global-batch-size", "16", "--epochs", "2", "--optim.warmup-epochs", "0.5",
         "--log.no-tensorboard", "--log.every-steps", "5"]


def in_a_pty(args: list[str], timeout: float = 120, env: dict | None = None) -> str:
    """What `python -m vitdist ARGS` writes to a fresh pty (size 0 x 0, as a bare pty reports)."""
    pty = pytest.importorskip("pty")
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the pty
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "vitdist", *args], {**os.environ, **(env or {})})
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            os.kill(pid, 9)
            break
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def test_a_terminal_gets_a_live_bar_and_the_header_first(tmp_path):
    # tqdm redraws at most every mininterval (0.1 s); an epoch of this tiny model can be faster than that, so the
    # bar showed only "0/20" in 1 of 3 CI runs. The bar must be redrawn at each read whatever tqdm's clock says:
    # with a mininterval of 1000 s it is drawn at the reads alone.
    out = in_a_pty(["train", *FLAGS, "--run-dir", str(tmp_path / "run")], env={"TQDM_MININTERVAL": "1000"})
    header = out.index("epoch train_loss")
    first_bar = out.index("\repoch 1/2:")
    first_row = out.index("    1     ", first_bar)  # after the bar's clearing \r
    assert header < first_bar < first_row  # the header now, the bar during epoch 1, its row when it ends
    bar = out[first_bar:first_row]
    assert "/20 [" in bar and "img/s" in bar  # 320 images / 16 a step
    assert "loss " in bar and "lr " in bar  # from the first read (step 5) on


def test_a_log_file_gets_plain_lines_and_no_carriage_return(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "vitdist", "train", *FLAGS, "--log.progress-every-s", "0",
                               "--run-dir", str(tmp_path / "run")], stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                              timeout=120)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("epoch 1/2 step ")]
    assert [line.split()[3] for line in lines] == ["5/20:", "10/20:", "15/20:", "20/20:"], text  # every read
    assert "img/s, loss " in lines[0] and "s left" in lines[0]
