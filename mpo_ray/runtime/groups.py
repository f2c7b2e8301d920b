"""The model groups of one scoring run: started once, on first need, inside one Ray session; killed on exit.

`reweight` and `nightly` open one and run everything that needs the models inside
it (the score pipeline's batches, nightly's feedback pairs), so the models load
once per run and no actor outlives it, failure or not.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from mpo_ray.config import Config
from mpo_ray.runtime.actors import ModelGroup, gather_arrays, start_groups
from mpo_ray.runtime.session import ray_session


class ModelGroups:
    """A worker group per model (and per reward source), started lazily: a run whose rows are all stored starts none.

    The first :meth:`start` decides what starts: ``scoring=True`` (sampling and scoring batches) adds the reward
    sources and, with ``mixture``, the actor of the token-level mixture; ``scoring=False`` starts only the
    reference and the policies (enough to score text given to them).
    """

    def __init__(self, config: Config, *, mixture: bool = False, progress: bool = True):
        self.config, self.mixture, self.progress = config, mixture, progress
        self.models: dict[str, ModelGroup] = {}  # the reference, each policy (and the mixture)
        self.rewards: dict[str, ModelGroup] = {}
        self.placement: dict = {}  # group name → where each replica runs
        self.startup_s = 0.0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ModelGroups:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def start(self, *, scoring: bool = True) -> ModelGroups:
        """Start the groups unless started (a stored batch found stale may need them late); returns self."""
        if self.models:
            return self
        self._stack.enter_context(ray_session(log_to_driver=self.progress))
        self._stack.callback(lambda: [g.kill() for g in {**self.models, **self.rewards}.values()])
        t0 = time.perf_counter()
        models, rewards = start_groups(self.config, rewards=scoring, mixture=self.mixture and scoring)
        self.models.update(models)
        self.rewards.update(rewards)
        timeout = self.config.resources.startup_timeout_s
        self.placement.update({n: g.info(timeout) for n, g in {**models, **rewards}.items()})
        self.startup_s = time.perf_counter() - t0
        return self

    def log_probs(self, prompts: list[str], token_ids: list[list[int]]) -> dict[str, np.ndarray]:
        """Teacher-forced log π(y|x) of the reference and each policy, all in parallel."""
        names = [self.config.reference.name, *self.config.policy_names]
        refs = {n: self.start(scoring=False).models[n].submit("score", prompts, token_ids) for n in names}
        return {n: gather_arrays(r) for n, r in refs.items()}
