"""The `vitdist` command: subcommands only, no logic."""

from __future__ import annotations

import importlib
import sys

from .console import survive_closed_output


# name -> (module with main(argv), one line of help)
COMMANDS = {
    "train": ("vitdist.train", "train a ViT (a preset plus overrides); also `accelerate launch -m vitdist.train`"),
    "presets": ("vitdist.presets", "list the presets with their parameter counts and what each changes"),
    "check": ("vitdist.checklist.checks", "before training: shape, gradient and overfit checks, PASS or FAIL"),
    "sweep": ("vitdist.checklist.sweep", "learning-rate sweep (or range test, or a grid) with a verdict per curve"),
    "diagnose": ("vitdist.checklist.diagnose",
                 "read a run's metrics: over/underfitting verdict and the flags to try next"),
    "tune": ("vitdist.checklist.tune",
             "the checklist's loop under a budget: check, sweep, baseline, diagnose, keep what helps"),
    "recommend": ("vitdist.checklist.recommend",
                  "the checklist's tables: a starting config for a data set size and GPU"),
    "plot": ("vitdist.checklist.plots",
             "loss, accuracy, learning rate and gradient norm of one or more runs, as a PNG"),
    "eval": ("vitdist.after.evaluate",
             "score a run's saved model on a split: accuracy, top-5, per class, confusion matrix"),
    "predict": ("vitdist.after.predict",
                "classify image files and folders with a run's model: top-k classes per image"),
    "export": ("vitdist.after.export",
               "a run's model as safetensors, timm, TorchScript, ONNX or a Hub folder, each checked"),
    "autobatch": ("vitdist.scale.autobatch", "measure the largest micro-batch that fits; plan accumulation"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vitdist COMMAND [--help] [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"vitdist: error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    survive_closed_output()  # `vitdist train ... | head`: the reader leaves, the command goes on
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
