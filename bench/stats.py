"""Pure helpers for the benchmark's statistics and schedules: no I/O, no clock.

Why the schedule looks the way it does: these machines are shared and
noisy, and the noise drifts: a neighbour's test suite can slow the
workload by 20% for a minute, and then stop. Measured on this machine, two
baselines a minute apart differed by up to 30%, while two baselines a few
seconds apart rarely differ by more than a few percent. So:

- bracketing (full and quick runs): every condition runs between two
  baselines, B c1 B c2 B ... cN B, and is compared with the mean of the
  two baselines around it, which cancels any drift slower than a slot;
- each round rotates the order of the conditions, so that no condition
  always follows the same neighbour (a printing tracer can leave the
  machine busier for a moment after it stops);
- the figures reported are medians over rounds, which one bad round
  cannot move.

Without bracketing (the smoke run, which only proves that everything
runs), a round has one baseline and conditions are compared with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

BASELINE = "baseline"


def median(values: Iterable[float]) -> float | None:
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def quantile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated quantile, q in [0, 1]."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def schedule(conditions: Sequence[str], rounds: int, bracket: bool = True) -> list[list[str]]:
    """The order of the slots: one list per round.

    Each round holds every condition once, rotated by the round number.
    bracket: a baseline before, between and after the conditions (with
    [a, b, c]: round 0 = [B, a, B, b, B, c, B], round 1 = [B, b, B, c, B,
    a, B]); otherwise one baseline first ([B, a, b, c]).
    """
    others = [c for c in conditions if c != BASELINE]
    n = len(others)
    out = []
    for r in range(rounds):
        rotated = others[r % n :] + others[: r % n] if n else []
        if bracket:
            slots = [BASELINE]
            for c in rotated:
                slots += [c, BASELINE]
        else:
            slots = [BASELINE, *rotated]
        out.append(slots)
    return out


def reference(slot: int, baselines: dict[int, float]) -> float | None:
    """The baseline a condition measured in `slot` is compared with.

    baselines: slot -> baseline value, within the same round. The mean of
    the nearest baseline before and the nearest after; one of them at the
    ends of a round; None without any.
    """
    before = [s for s in baselines if s < slot]
    after = [s for s in baselines if s > slot]
    near = ([baselines[max(before)]] if before else []) + ([baselines[min(after)]] if after else [])
    return sum(near) / len(near) if near else None


def disagreement(slot: int, baselines: dict[int, float]) -> float | None:
    """How far apart the two baselines around `slot` are (|after/before - 1|);
    None unless there is one on each side."""
    before = [s for s in baselines if s < slot]
    after = [s for s in baselines if s > slot]
    if not before or not after or not baselines[max(before)]:
        return None
    return abs(baselines[min(after)] / baselines[max(before)] - 1)


def drift(baselines: Sequence[float]) -> list[float]:
    """Each baseline over the one before it (in time order): the noise that
    bracketing leaves, since two neighbouring baselines surround each slot."""
    return [b / a for a, b in zip(baselines, baselines[1:]) if a]
