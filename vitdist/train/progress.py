"""What a run prints while it runs: a live bar at a terminal, plain lines in a log (Progress), and one row per epoch
(EpochTable)."""

from __future__ import annotations

import shutil
import sys
import time

from tqdm.auto import tqdm



class Progress:
    """An epoch's progress, on rank 0. At a terminal, a live tqdm bar on stderr: steps, images/s, time left, and
    the loss and rate of the last read. Otherwise (a file, a pipe, a SLURM log) a plain line at a read when
    `every_s` seconds have passed since the last one, and never a carriage return."""

    def __init__(self, steps: int, batch: int, desc: str, enabled: bool, every_s: float, print_fn, done: int = 0):
        self.steps, self.batch, self.desc, self.print, self.every_s = steps, batch, desc, print_fn, every_s
        self.done, self.start, self.t0 = done, done, time.perf_counter()
        self.last_line = self.t0
        self.read = ""  # ", loss L, lr R" of the last read
        self.bar = None
        self.plain = enabled and not sys.stderr.isatty()
        if enabled and not self.plain:
            # A terminal that reports its size as 0 x 0 (a bare pty) would get no bar from tqdm: assume 100 x 24.
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(total=steps, initial=done, desc=desc, unit="step", leave=False, ncols=size.columns,
                            nrows=size.lines, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(1)  # redrawn at most every 0.1 s (tqdm's mininterval): a fast epoch may not be

    def postfix(self) -> str:
        rate = (self.done - self.start) * self.batch / max(time.perf_counter() - self.t0, 1e-9)
        return f"{rate:,.0f} img/s{self.read}"

    def show(self, row: dict) -> None:
        """After a read: the loss and rate it read. The bar is redrawn here whatever the time since the last
        redraw: a read is when the host has news, and an epoch faster than tqdm's 0.1 s would show none."""
        self.read = f", loss {row['loss']:.4f}, lr {row['lr']:.2e}"
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=True)
        now = time.perf_counter()
        if self.plain and now - self.last_line >= self.every_s:
            elapsed, here = now - self.t0, self.done - self.start
            left = elapsed / max(here, 1) * (self.steps - self.done)
            self.print(f"{self.desc} step {self.done}/{self.steps}: {here * self.batch / elapsed:,.0f} img/s"
                       f"{self.read}, {elapsed:.0f} s in, about {left:.0f} s left")
            self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochTable:
    """One printed row per epoch."""

    COLUMNS = [("epoch", "{:>5}"), ("train_loss", "{:>10.4f}"), ("train_acc", "{:>9.4f}"),
               ("train_clean_acc", "{:>9.4f}"), ("val_loss", "{:>8.4f}"), ("val_acc", "{:>7.4f}"),
               ("lr", "{:>9.2e}"), ("grad_norm_mean", "{:>9.3f}"), ("epoch_time_s", "{:>7.1f}"),
               ("images_per_s", "{:>7.0f}")]
    HEADER = "epoch train_loss train_acc clean_acc val_loss val_acc        lr grad_norm  time_s   img/s"
    EMA_COLUMN, EMA_HEADER = ("val_acc_ema", "{:>7.4f}"), " ema_acc"  # after val_acc, with --ema.decay

    def __init__(self, print_fn, ema: bool = False):
        self.print, self.printed_header = print_fn, False
        self.columns, self.text = list(self.COLUMNS), self.HEADER
        if ema:
            self.columns.insert(6, self.EMA_COLUMN)
            at = self.HEADER.index(" val_acc") + len(" val_acc")
            self.text = self.HEADER[:at] + self.EMA_HEADER + self.HEADER[at:]

    def header(self) -> None:
        if not self.printed_header:
            self.print(self.text)
            self.printed_header = True

    def row(self, m: dict, best: bool) -> None:
        self.header()
        cells = [fmt.format(m[k]) if m[k] is not None else f"{'-':>{len(fmt.format(0.0 if 'f' in fmt else 0))}}"
                 for k, fmt in self.columns]
        self.print(" ".join(cells) + (" *" if best else ""))
