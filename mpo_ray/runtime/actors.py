"""Ray actors, one model each, and the worker groups the driver talks to.

* ``PolicyActor`` hosts one policy (or the reference). It *samples* responses
  (as the reference sampler, or as one component of a mixture proposal) and
  *scores* token ids teacher-forced. Sampling and scoring live in one class
  because the reference does both and every policy may be asked to sample.
* ``MixtureActor`` hosts all K policies in one process (the served token-level
  mixture needs every policy's next-token distribution at each step): it samples
  the mixture at a given λ and teacher-forces its log-prob, for the `geometric`
  proposal.
* ``RewardActor`` hosts a reward source: a `transformers` sequence-classifier
  or a Python function ``module:function``.
* ``ModelGroup`` is the driver's handle on the replicas of one model: it splits
  a batch's rows over them and gathers the results in order (veRL-style single
  controller, worker groups).

Each actor asks for one GPU when the cluster has GPUs and a CPU share
otherwise; actors restart on failure (``max_restarts``) and their calls are
retried (``max_task_retries``), so killing one mid-run costs a reload, not the run.

Results come back through `get`: a UserError raised inside a worker (a reward
function's output, a policy that does not load there) is raised again as itself,
one line at the CLI, not as Ray's wrapping of the worker's traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import sys
import uuid

import numpy as np
import pyarrow as pa
import ray

from mpo_ray.config import Config, PolicySpec, ResourcesConfig, RewardSpec
from mpo_ray.core.errors import UserError
from mpo_ray.runtime.resources import Placement, plan_resources

# The sampler label (score table's `sampler`, worker group, actor name) of the token-level mixture at a solved λ;
# not a valid model name (config.schema.Name), so it cannot collide with the reference or a policy.
MIXTURE_SAMPLER = "@mix"


def _set_threads(num_cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


@ray.remote
class PolicyActor:
    """One policy on one device: samples and teacher-forced scores."""

    def __init__(self, spec: PolicySpec, num_cpus: float = 1.0):
        from mpo_ray.models.decoding import MixedPolicy
        from mpo_ray.models.policies import load_policies

        _set_threads(num_cpus)
        self.policy = load_policies([spec])[0]
        self.sampler = MixedPolicy([self.policy], [1.0])

    def info(self) -> dict:
        return {
            "name": self.policy.name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": str(self.policy.device),
            "vocabulary_hash": self.policy.vocabulary_hash,
        }

    def sample(self, prompts: list[str], seeds: list[int], params: dict) -> dict:
        """One response per row (repeat a prompt for m samples); each row seeded on its own."""
        return _samples(self.sampler.generate(prompts, seed=seeds, **params))

    def score(self, prompts: list[str], token_ids: list[list[int]]) -> np.ndarray:
        from mpo_ray.models.scoring import score_sequences

        return score_sequences(self.policy, prompts, token_ids)


def _samples(gens) -> dict:
    """What a sampling call returns (see `gather_samples`)."""
    return {
        "token_ids": [g.token_ids for g in gens],
        "text": [g.text for g in gens],
        "logp_proposal": np.array([g.proposal_logprob for g in gens], dtype=np.float64),
    }


@ray.remote
class MixtureActor:
    """The K policies in one process: samples of the token-level mixture at any λ, and its teacher-forced log-prob."""

    def __init__(self, specs: list, num_cpus: float = 1.0):
        from mpo_ray.models.generator import BatchGenerator

        _set_threads(num_cpus)
        self.generator = BatchGenerator(specs)

    def info(self) -> dict:
        return {
            "name": MIXTURE_SAMPLER,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": str(self.generator.policies[0].device),
            "policies": [p.name for p in self.generator.policies],
        }

    def _mixed(self, weights):
        from mpo_ray.models.decoding import MixedPolicy

        return MixedPolicy(self.generator.policies, weights)  # built per call: λ changes every batch

    def sample(self, prompts: list[str], seeds: list[int], weights: list[float], params: dict) -> dict:
        return _samples(self._mixed(weights).generate(prompts, seed=seeds, **params))

    def score(self, prompts: list[str], token_ids: list[list[int]], weights: list[float]) -> np.ndarray:
        """log π̃_λ(y|x) of the untempered token-level mixture: not a function of the sequence-level log π_k,
        since every step has its own normaliser."""
        return self._mixed(weights).sequence_logprob(prompts, token_ids)[0]


@ray.remote
class RewardActor:
    """One reward source (a Python function or a reward model) in its own process."""

    def __init__(self, spec: RewardSpec, num_cpus: float = 1.0):
        from mpo_ray.models.rewards import RewardSource

        _set_threads(num_cpus)
        self.spec = spec
        self.source = RewardSource(spec)

    def info(self) -> dict:
        return {"name": self.spec.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return self.source.score(prompts, responses)


# --------------------------------------------------------------------------- #
# Worker groups
# --------------------------------------------------------------------------- #


class ModelGroup:
    """The replicas of one model; rows of a call are split evenly over them."""

    def __init__(self, name: str, actor_cls, payload, plan: Placement, resources: ResourcesConfig, run_id: str = ""):
        self.name = name
        self.options = {"num_gpus": plan.num_gpus, "num_cpus": plan.num_cpus}
        self.actors = [
            actor_cls.options(
                name=f"mpo-{run_id}-{name}-{i}" if run_id else None,  # findable by operators (and fault tests)
                num_gpus=plan.num_gpus,
                num_cpus=plan.num_cpus,
                max_restarts=resources.max_restarts,
                max_task_retries=resources.max_task_retries,
                scheduling_strategy="SPREAD",  # spread the K models over nodes
            ).remote(payload, plan.num_cpus)
            for i in range(plan.replicas)
        ]

    def submit(self, method: str, *columns, **constants) -> list:
        """Start ``method`` on contiguous row chunks (constants go to every chunk); returns the refs, in row order."""
        n = len(columns[0])
        parts = min(len(self.actors), max(n, 1))
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        return [
            getattr(actor, method).remote(*(c[lo:hi] for c in columns), **constants)
            for actor, lo, hi in zip(self.actors, bounds[:-1], bounds[1:])
        ]

    def info(self, timeout: float | None = None) -> list[dict]:
        """Where each replica runs; waits for them to start (model loaded) for at most ``timeout`` seconds."""
        refs = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise TimeoutError(
                f"{len(refs) - len(ready)} actor(s) for {self.name!r} did not start within {timeout:.0f}s; "
                "the cluster has "
                f"{ray.cluster_resources()} but each asks for {self.options}. Add nodes, lower resources.*, "
                "or raise resources.startup_timeout_s."
            )
        return get(refs)  # a constructor's UserError (a policy that does not load on that node) surfaces here

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)


# --------------------------------------------------------------------------- #
# Results, and the user's mistakes made inside workers
# --------------------------------------------------------------------------- #

_RAISED_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.MULTILINE)  # "package.module.Class: message" in a traceback
_RAY_DATA_WRAPPERS = ("ray.exceptions.UserCodeException", "ray.data.exceptions.RayDataUserCodeException")


def _user_error_class(path: str):
    """The UserError (sub)class a traceback names, or None."""
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and module_name.startswith("mpo_ray."):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, UserError) else None


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError a Ray error carries, else None (a bug, whose Ray traceback the caller keeps).

    A task or actor method that raised one arrives as ``RayTaskError(UserError)``: an instance of both, whose
    message is the worker's whole traceback (9 lines at the CLI instead of 1); ``.cause`` is the original. An
    actor whose constructor raised one arrives as ``ActorDiedError``, and a Ray Data UDF's (``map_batches``)
    as ``RayTaskError(UserCodeException)``: both keep only the worker's traceback as text, so the exception
    line is read back from it, and only when the UserError is the last exception raised there (Ray Data's
    UserCodeException wrapper aside): a bug raised while handling a UserError stays a bug.
    """
    cause = exc
    while isinstance(cause, ray.exceptions.RayTaskError):  # a task that called a task: the innermost cause
        cause = cause.cause
    if isinstance(cause, UserError):
        return cause
    init_failed = isinstance(exc, ray.exceptions.RayActorError) and getattr(exc, "_actor_init_failed", False)
    if not (init_failed or isinstance(cause, ray.exceptions.UserCodeException)):
        return None
    raised = [m.groups() for m in _RAISED_LINE.finditer(str(exc))]
    while raised and raised[-1][0] in _RAY_DATA_WRAPPERS:
        raised.pop()
    cls = _user_error_class(raised[-1][0]) if raised else None
    if cls is None:
        return None
    try:
        return cls(raised[-1][1])
    except TypeError:  # a subclass that takes other arguments
        return UserError(raised[-1][1])


@contextlib.contextmanager
def user_errors():
    """A UserError raised inside a worker comes out of the block as itself (one line at the CLI); bugs unchanged."""
    try:
        yield
    except ray.exceptions.RayError as exc:
        error = user_error_in(exc)
        if error is None:
            raise
        raise error from None


def get(refs):
    """``ray.get``, with the user's mistakes made inside workers re-raised as themselves (`user_errors`)."""
    with user_errors():
        return ray.get(refs)


def gather_arrays(refs: list) -> np.ndarray:
    return np.concatenate(get(refs)) if refs else np.zeros(0)


def gather_samples(refs: list) -> dict:
    parts = get(refs)
    return {
        "token_ids": [t for p in parts for t in p["token_ids"]],
        "text": [t for p in parts for t in p["text"]],
        "logp_proposal": np.concatenate([p["logp_proposal"] for p in parts]),
    }


def start_groups(
    config: Config, *, rewards: bool = True, mixture: bool = False
) -> tuple[dict[str, ModelGroup], dict[str, ModelGroup]]:
    """A worker group per model (reference and policies), with ``mixture`` one more hosting all K policies
    (`MIXTURE_SAMPLER`, sized like one model's), and with ``rewards`` one per reward source."""
    specs = [config.reference, *config.policies]
    reward_specs = list(config.rewards) if rewards else []
    plan = plan_resources(config.resources, len(specs) + len(reward_specs) + mixture)
    run_id = uuid.uuid4().hex[:8]
    groups = {s.name: ModelGroup(s.name, PolicyActor, s, plan, config.resources, run_id) for s in specs}
    if mixture:
        groups[MIXTURE_SAMPLER] = ModelGroup(
            MIXTURE_SAMPLER, MixtureActor, list(config.policies), plan, config.resources, run_id
        )
    reward_groups = {
        r.name: ModelGroup(
            r.name,
            RewardActor,
            r,
            dataclasses.replace(plan, num_gpus=0.0) if r.function else plan,
            config.resources,
            run_id,
        )
        for r in reward_specs
    }
    return groups, reward_groups


@ray.remote
class GeneratorActor:
    """Several policies loaded once in one process, generating under any weights over them (sweeps)."""

    def __init__(self, specs: list, threads: int):
        from mpo_ray.models.generator import BatchGenerator

        self.generator = BatchGenerator(specs, threads)

    def generate(self, label: str, weights, ids, prompts, seeds, params: dict, batch_size: int, score: tuple = ()):
        """``batch_size`` prompts decode at once; on an accelerator each call holds several times as many,
        refilling the slots of finished rows (`models.generator.refill_plan`)."""
        from mpo_ray.models.generator import refill_plan

        call, slots = refill_plan(batch_size, self.generator.on_accelerator)
        return pa.concat_tables(
            [
                self.generator.rows(
                    ids[i : i + call],
                    prompts[i : i + call],
                    seeds[i : i + call],
                    weights,
                    params,
                    label,
                    score=score,
                    slots=slots,
                )
                for i in range(0, len(ids), call)
            ]
        )


class Generator:
    """The driver's handle on a GeneratorActor: blocking calls, explicit kill."""

    def __init__(self, handle):
        self.handle = handle

    def generate(self, *args, **kwargs):
        return get(self.handle.generate.remote(*args, **kwargs))

    def kill(self) -> None:
        ray.kill(self.handle, no_restart=True)


def start_generator(config: Config, specs: list) -> Generator:
    """One generator actor sized as one replica of the generate workflow (the same GPU / CPU rules and config keys)."""
    from mpo_ray.runtime.resources import replica_placement

    plan = replica_placement(config.generate.model_copy(update={"concurrency": 1}))
    if not plan.num_gpus and config.generate.cpus_per_replica is None:
        # no Ray Data tasks to leave a core for: the one actor gets every CPU (25-40% faster on 2 cores, measured)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        plan = dataclasses.replace(plan, num_cpus=cpus, threads=max(1, int(cpus)))
    handle = GeneratorActor.options(num_gpus=plan.num_gpus, num_cpus=plan.num_cpus).remote(specs, plan.threads)
    return Generator(handle)
