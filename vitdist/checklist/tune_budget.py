"""What a tune may spend: its budget of trainings checked against the plan at start (`check_budget`), the time
the template needs once the sweep has run (`template_fits`), and one clock for every rank (`agree`)."""

from __future__ import annotations

import math

from ..config import TrainConfig, UserError


def check_budget(args) -> None:
    """The budget counts every training the tune starts: a budget (of tune.TuneArgs) too small for the plan (the
    sweep's rates, the template on every seed, the confirmation on fresh seeds) is refused at start, with the
    smallest that fits."""
    if args.seeds < 1 or args.confirm_seeds < 0:
        raise UserError(f"--seeds must be >= 1 and --confirm-seeds >= 0, got {args.seeds} and {args.confirm_seeds}")
    rates = len(set(args.lrs))
    plan = rates + args.seeds + 2 * args.confirm_seeds
    fits = min(args.budget_trials - rates - 2 * args.confirm_seeds, args.seeds - 1)  # seeds this budget affords
    if args.budget_trials < plan:
        parts = [f"the sweep's {rates} rates", "the template" if args.seeds == 1 else
                 f"the template on {args.seeds} seeds"]
        if args.confirm_seeds:
            parts.append(f"the template and the winner on {args.confirm_seeds} fresh seeds at the end")
        raise UserError(f"--budget-trials {args.budget_trials} does not cover the tune's plan: "
                        f"{', '.join(parts[:-1])} and {parts[-1]} are {plan} trainings before any change is tried: "
                        f"give --budget-trials {plan} or more (each {args.seeds} above {plan} try a change), or "
                        f"fewer --lrs" + (f" or --seeds (at most {fits} fit: no change tried)" if fits >= 1 else
                                          " or --seeds" if args.seeds > 1 else "")
                        + (" or --confirm-seeds" if args.confirm_seeds else ""))
    if not (math.isfinite(args.budget_minutes) and args.budget_minutes >= 0):
        raise UserError(f"--budget-minutes must be a number of minutes >= 0 (0: no time limit), got "
                        f"{args.budget_minutes:g}")


def agree(flag: bool) -> bool:
    """Rank 0's answer on every rank: a time budget read from each rank's own clock could split the ranks'
    paths, and the next trial would wait for a rank that never comes."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def template_fits(t, template: TrainConfig) -> bool:
    """After the sweep: whether the template likely ends within the time budget of the tune.Tuner t (the sweep's
    trials took t.sweep_minutes, at --sweep-epochs each). If not, the tune stops here and says what would do."""
    runs = max(len(t.sweep["runs"]), 1)
    one = t.sweep_minutes / runs * template.epochs / t.args.sweep_epochs  # one training of the template
    expected = one * math.ceil(t.args.seeds / t.workers)  # its seeds side by side on the workers
    confirming = one * math.ceil(2 * t.args.confirm_seeds / t.workers)  # kept for the end
    if agree(expected + confirming <= t.minutes_left()):
        return True
    spent = t.args.budget_minutes - t.minutes_left()
    t.decide("budget", "the template", {"minutes_spent": spent, "template_minutes": expected}, "stop",
             f"the time budget is spent: the check and the sweep took {spent:.1f} min, and the template alone "
             f"would take about {expected:.1f} more (and {confirming:.1f} the confirmation at the end): give "
             f"--budget-minutes {math.ceil(spent + 3 * expected + confirming)} or "
             f"more (the template, a baseline and one change), or fewer --lrs or --sweep-epochs")
    return False
