"""StreamingBSMD: the paper's mirror descent over prompts that arrive batch by batch (the score pipeline's)."""

from __future__ import annotations

import math

import numpy as np

from mpo_ray.core.table import build_table, check_simplex, is_real, positive_int


class StreamingBSMD:
    """BSMD over prompts that arrive batch by batch and are never revisited.

    One mirror-descent step per prompt (the paper's Algorithm 2 with a batch of
    one), step ``c/√T`` for a planned total of ``total_steps`` prompts; the
    answer is the average iterate. Feeding the same batches in the same order
    reproduces the same λ, which is what makes a resumed run match.
    """

    def __init__(self, num_objectives: int, total_steps: int, step_size: float | None = None, init=None):
        self.K = positive_int("num_objectives", num_objectives, 1)
        self.total_steps = positive_int("total_steps", total_steps, 1)
        if step_size is not None and not (is_real(step_size) and math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}.")
        self.step_size = step_size
        self.weights = np.full(self.K, 1.0 / self.K) if init is None else check_simplex("init", init, self.K)
        self._sum = np.zeros(self.K)
        self.steps = 0

    @property
    def average(self) -> np.ndarray:
        return self._sum / self.steps if self.steps else self.weights.copy()

    def update(self, log_ratios, *, mask=None, log_importance=None) -> np.ndarray:
        """Take one step per prompt of this batch, in order; returns the current average iterate."""
        table = build_table(log_ratios, mask, log_importance)
        if table.K != self.K:
            raise ValueError(f"log_ratios has K={table.K} objectives, this stream was started with {self.K}.")
        if self.K == 1:
            self.steps += table.N
            self._sum += table.N
            return self.average
        # Set once, from the first batch (committed with the rest, only if the batch succeeds).
        step_size = table.default_step_size(self.weights) if self.step_size is None else self.step_size
        eta = step_size / math.sqrt(self.total_steps)
        weights, total = self.weights.copy(), self._sum.copy()  # committed only if all stays finite
        for i in range(table.N):
            _, g, _, _ = table.subset(np.array([i])).evaluate(weights)
            total += weights
            logits = np.log(np.maximum(weights, 1e-300)) - eta * (g - g.min())
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(total))):
            raise ValueError(
                "StreamingBSMD.update produced non-finite weights from this batch of log_ratios; the stream "
                "is left as it was before the batch. Check the batch's log-ratios (units, masked samples)."
            )
        self.weights, self._sum, self.step_size = weights, total, step_size
        self.steps += table.N
        return self.average
