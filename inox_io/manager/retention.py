r"""Which steps a :class:`~inox_io.CheckpointManager` keeps: a policy over the steps
and their metrics, as pure functions (nothing here reads the disk).

Example:
    >>> policy = Retention(max_to_keep=2, best_fn=lambda m: m['loss'], best_mode='min')
    >>> metrics = {1: {'loss': 0.5}, 2: {'loss': 0.2}, 3: {'loss': 0.4}, 4: None}
    >>> policy.ranked(metrics), policy.best(metrics)
    ([2, 3, 1, 4], 2)
    >>> sorted(policy.keep(metrics, saved=4))  # the two best, and the newest
    [2, 3, 4]
"""

from __future__ import annotations

__all__ = ["Retention"]

import dataclasses
import math

from typing import Any, Callable, Dict, List, Literal, Mapping, Set

Metrics = Dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Retention:
    r"""Keeps the newest :py:`max_to_keep` steps, or with :py:`best_fn` the
    :py:`max_to_keep` best ones; all steps if :py:`max_to_keep` is None. The newest
    step (the one to resume from) and the step just saved are always kept, so a
    policy may keep N + 1 steps.

    Arguments:
        max_to_keep: How many steps to keep.
        best_fn: Scores a step from its metrics. Steps without metrics, or scored NaN,
            rank below all others; newer first among equals.
        best_mode: Whether the best score is the highest (``'max'``) or lowest (``'min'``).
    """

    max_to_keep: int | None = None
    best_fn: Callable[[Dict[str, Any]], float] | None = None
    best_mode: Literal["max", "min"] = "max"

    def __post_init__(self):
        if self.max_to_keep is not None and (type(self.max_to_keep) is not int or self.max_to_keep < 1):
            raise ValueError(f"max_to_keep must be a positive int or None, got {self.max_to_keep!r}")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {self.best_mode!r}")

    def score(self, metrics: Metrics) -> float | None:
        r"""The score of a step, higher is better; None for an unscored step."""

        if metrics is None or self.best_fn is None:
            return None
        score = float(self.best_fn(metrics))
        if math.isnan(score):
            return None
        return score if self.best_mode == "max" else -score

    def ranked(self, metrics: Mapping[int, Metrics]) -> List[int]:
        r"""Steps from best to worst."""

        scores = {step: self.score(m) for step, m in metrics.items()}
        return sorted(scores, key=lambda s: (scores[s] is not None, scores[s] or 0.0, s), reverse=True)

    def best(self, metrics: Mapping[int, Metrics]) -> int | None:
        r"""The step of best score, or None if no step has one."""

        ranked = self.ranked(metrics)
        return ranked[0] if ranked and self.score(metrics[ranked[0]]) is not None else None

    def keep(self, metrics: Mapping[int, Metrics], saved: int) -> Set[int]:
        r"""The steps to keep, among those of :py:`metrics` (every complete step), after
        :py:`saved` was saved."""

        steps = sorted(metrics)
        if self.max_to_keep is None:
            return set(steps)
        keep = set(steps[-self.max_to_keep :] if self.best_fn is None else self.ranked(metrics)[: self.max_to_keep])
        keep.add(steps[-1])  # the newest complete step: the one to resume from
        keep.add(saved)  # and the one just written, were it older (after a rollback)
        return keep
