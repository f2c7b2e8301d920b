"""What a valid config is (workflows/configs/tiny.yaml is a complete example).

Every section is a frozen, strict pydantic model that forbids unknown keys, so a
typo or a quoted number is an error naming the key, never a silent default.
Each rule sits on the field it constrains, or in a validator of the class that
owns every field it relates; loader.py turns failures into one-line errors.
"""

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mpo_ray.core.errors import UserError
from mpo_ray.core.names import VERSION_NAME

DTYPES = ("float32", "bfloat16", "float16")
NIGHT_ID = VERSION_NAME  # a night id names a store version
# Score-table columns every run writes whatever the policies are called (io/schemas.py): a policy's log-probs go
# to `logp_<name>`, so a policy named `ref` or `proposal` would overwrite the reference's or the proposal's column.
FIXED_LOGP_COLUMNS = {"logp_ref": "the reference's log-probs", "logp_proposal": "the proposal's log-probs"}
# The decoder refuses |λ_k| beyond this (models/decoding.py MAX_ABS_WEIGHT: float32 mixing loses its resolution);
# config cannot import models, so the number is repeated here and a test keeps the two equal.
MAX_ABS_WEIGHT = 1e4


class ConfigError(UserError):
    """A config the user must fix; the message is one line naming the file and the key."""


class Invalid(ValueError):
    """A broken rule at ``key``: dotted, relative to the model that raises it ("" = that model or field)."""

    def __init__(self, key: str, why: str):
        super().__init__(f"`{key}` {why}" if key else why)
        self.key, self.why = key, why


def _matching(pattern: re.Pattern, rule: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise Invalid("", f"is {value!r}; {rule}.")
        return value

    return AfterValidator(check)


Name = Annotated[
    str,
    _matching(
        re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"),
        "a name must start with a letter and use only letters, digits, '_' or '-' (it becomes a column name)",
    ),
]
Tokens = Annotated[int, Field(ge=1)]
# What torch.device accepts and mpo-ray can place a model on; a typo ("gpu", "cuda0") fails here, not in an actor.
Device = Annotated[
    str, _matching(re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)\Z"), "use cpu, cuda, cuda:N, mps, xpu or xpu:N")
]


class _Strict(BaseModel):
    # strict: "8" is not an int and true is not a number (an int is a float); no inf/nan anywhere
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class PolicySpec(_Strict):
    """How to load one policy. `model` is a local HF directory, a hub id, or
    "default" (the embedded SmolLM2-135M-Instruct). `dtype="auto"` means bfloat16
    on GPU and float32 on CPU; `device=None` means cuda when available."""

    name: Name
    model: str = Field(min_length=1)
    adapter: str | None = None
    system_prompt: str | None = None
    dtype: Literal[("auto",) + DTYPES] = "auto"
    device: Device | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def __init__(self, *args, **kwargs):
        """Positional arguments in field order too, as before: ``PolicySpec("ref", "tiny:base")``."""
        names = list(type(self).model_fields)[: len(args)]
        if len(args) > len(type(self).model_fields) or set(names) & kwargs.keys():
            raise TypeError(f"PolicySpec: too many or repeated arguments {args!r}, {sorted(kwargs)!r}")
        super().__init__(**dict(zip(names, args)), **kwargs)


class RewardSpec(_Strict):
    """A reward source for one objective: a HF sequence-classification model or a Python function.

    ``function`` is ``"module:function"``, called as ``fn(prompts, responses) -> list[float]``. ``objective``
    names the policy whose objective this reward measures; rewards that drive the solver
    (``estimate: rewards``) need it.
    """

    name: Name
    function: (
        Annotated[str, _matching(re.compile(r"^[\w.]+:[\w.]+$"), "it must look like 'package.module:function'")] | None
    ) = None
    model: str | None = None
    objective: str | None = None
    revision: str | None = None
    dtype: Literal[("auto",) + DTYPES] = "auto"
    device: Device | None = None
    batch_size: int = Field(16, ge=1)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if (self.function is None) == (self.model is None):
            raise Invalid("", f"({self.name}) needs exactly one of `function` (module:function) or `model`.")
        return self


class ResourcesConfig(_Strict):
    """How model actors use the cluster. ``None`` means: decide from what the cluster has."""

    gpus_per_model: float | None = Field(None, ge=0)  # 1 when the cluster has GPUs, else 0
    cpus_per_model: float = Field(1.0, ge=0)
    replicas: int | None = Field(None, ge=1)  # per model; default: spare GPUs spread over the models, else 1
    max_restarts: int = Field(3, ge=0)  # Ray reads -1 as "forever": a crash loop should end
    max_task_retries: int = Field(3, ge=0)
    startup_timeout_s: float = Field(900.0, gt=0)  # actors that cannot be placed (or load) by then fail the run clearly


class SolverConfig(_Strict):
    """How λ is solved: `full` to certificate gap `tol`, or `bsmd` (the paper's stochastic mirror descent)."""

    method: Literal["full", "bsmd"] = "full"
    tol: float = Field(1e-9, ge=0)
    steps: int | None = Field(None, ge=1)
    step_size: float | None = Field(None, gt=0)
    batch_prompts: int = Field(1, ge=1)  # BSMD prompts per step (the paper: 1)


class DecodingParams(_Strict):
    """What a decoder needs, checked once for every section that decodes. ``temperature: 0`` is greedy."""

    max_new_tokens: Tokens = 64
    temperature: float = Field(1.0, ge=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)

    def params(self) -> dict:
        """The keyword arguments of the decoder."""
        return {key: getattr(self, key) for key in ("max_new_tokens", "temperature", "top_k", "top_p")}


class SamplingConfig(DecodingParams):
    """How responses are drawn for the score table. Untempered by default: the estimator assumes y ~ π_ref."""

    samples_per_prompt: int = Field(8, ge=1)
    temperature: Annotated[float, Field(gt=0)] = 1.0  # greedy samples would all be one response
    # mixture: m/(K+1) samples from π_ref and from each policy, balance-heuristic weighted. Measured in an enumerable
    # world (`mpo-ray bench estimator`): policies 4 nats from π_ref, m = 16, L1 error of λ̂ 0.03 vs 0.43 for reference.
    # geometric: batches after the first draw `geometric_share` of m from the served token-level mixture at the λ
    # solved on the batches before (one more actor, hosting all K policies), the rest as mixture (docs/design.md §1).
    proposal: Literal["reference", "mixture", "geometric"] = "mixture"
    geometric_share: float = Field(0.5, gt=0, le=1)  # geometric only

    @model_validator(mode="after")
    def _mixture_is_untempered(self):
        if self.proposal in ("mixture", "geometric") and (self.temperature != 1.0 or self.top_k or self.top_p):
            raise Invalid(
                "proposal",
                f"is `{self.proposal}`, which needs untempered sampling (temperature 1, no "
                "top_k/top_p): the importance weights assume samples from the mixture itself.",
            )
        return self

    def fingerprint(self) -> dict:
        """The settings a score row depends on (`geometric_share` only when used: other runs' fingerprints stay)."""
        return self.model_dump(exclude=set() if self.proposal == "geometric" else {"geometric_share"})


class ScoringSection(_Strict):
    """What `reweight` and `nightly` share: the prompts, the score table's sampling, the solve and its seed.

    One base, so both sections mean the same by each key and `workflows/solve.py` prepares and solves either.
    """

    prompts: str
    prompt_column: str = "prompt"
    id_column: str = "prompt_id"
    max_prompts: int | None = Field(None, ge=1)
    batch_prompts: int = Field(16, ge=1)
    estimate: Literal["implicit", "rewards"] = "implicit"
    bootstrap_resamples: int = Field(200, ge=0)  # λ's 90% interval from prompts resampled this often (0: none)
    seed: int = Field(0, ge=0)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)

    @property
    def ess_floor(self) -> float:
        """The median ESS below which the artifact flags `ess.low`."""
        raise NotImplementedError


class ReweightConfig(ScoringSection):
    """One offline solve for λ over a prompt set (`mpo-ray reweight`)."""

    output: str | None = None
    stream_bsmd: bool = True  # run BSMD as batches arrive (the paper's way) before the full solve
    min_median_ess: float = Field(2.0, ge=0)  # warn below this

    @property
    def ess_floor(self) -> float:
        return self.min_median_ess


DEFAULT_CANDIDATES = 4  # generate.num_candidates when sampling and not given (GenerateConfig)


class GenerateConfig(DecodingParams):
    """Bulk generation through the mixed policy (`mpo-ray generate`).

    Weights come from ``weights_uri`` (a weights.json of `mpo-ray reweight`, or a weights store of `mpo-ray
    nightly`: its `latest`, or ``<store>/versions/<night>`` pinned; the version goes into every row) or from
    ``weights`` (a list in policy order, or {policy name: λ}). ``concurrency`` is the number of replicas, each
    hosting all K policies; ``gpus_per_replica`` defaults to 1 when the cluster has GPUs (K: a GPU per policy).
    """

    prompts: str
    output: str | None = None
    prompt_column: str = "prompt"
    id_column: str = "prompt_id"
    weights_uri: str | None = None
    weights: dict[str, float] | list[float] | None = None
    max_new_tokens: Tokens = 128
    stop: list[Annotated[str, Field(min_length=1)]] = []
    seed: int = Field(0, ge=0)
    # n > 1: keep one of n token-level samples ∝ π_λ/q, nearer the sequence-level π_λ MPO's guarantee is about
    # (equal only as n → ∞). Default: 4 when sampling (`mpo-ray bench serving`: 0.026 nats short of F(λ*) in its
    # hard world vs 0.115 with one; about 2× the CPU of one candidate, 4× the decoded tokens), 1 when greedy.
    num_candidates: int | None = Field(None, ge=1)  # unset: `candidates` resolves it
    batch_size: int = Field(16, ge=1)  # prompts decoding at once per replica (with GPUs: refilled slots)
    concurrency: int | None = Field(None, ge=1)  # replicas; default: one per GPU group, else 1
    gpus_per_replica: float | None = Field(None, ge=0)
    cpus_per_replica: float | None = Field(
        None, gt=0
    )  # default: the cluster's CPUs less one for reading/writing, shared
    rows_per_file: int = Field(1000, ge=1)  # rows per output file; a crash loses at most about this many finished rows
    alternatives: ClassVar = (("weights", "weights_uri"),)  # an override of one replaces the other as the file set it

    @property
    def candidates(self) -> int:
        """num_candidates as given, else DEFAULT_CANDIDATES when sampling and 1 when greedy."""
        if self.num_candidates is not None:
            return self.num_candidates
        return 1 if self.temperature == 0 else DEFAULT_CANDIDATES

    @model_validator(mode="after")
    def _consistent(self):
        if self.candidates > 1 and self.temperature == 0:
            raise Invalid(
                "num_candidates", "> 1 needs sampling (greedy candidates are identical); set temperature > 0."
            )
        if self.weights is not None and self.weights_uri is not None:
            raise Invalid(
                "weights", "and `weights_uri` (a weights.json from `mpo-ray reweight`) are both set; keep one."
            )
        items = self.weights.items() if isinstance(self.weights, dict) else enumerate(self.weights or [])
        for key, w in items:
            if abs(w) > MAX_ABS_WEIGHT:
                raise Invalid(
                    f"weights[{key}]" if isinstance(key, int) else f"weights.{key}",
                    f"is {w:g}, beyond the decoder's |λ| <= {MAX_ABS_WEIGHT:g} (float32 mixing would lose all "
                    "resolution); give weights of a sensible size, e.g. on the simplex (summing to 1).",
                )
        return self


class GateConfig(_Strict):
    """When a night's weights may replace `latest`: every check must pass, else the old weights stay."""

    max_gap: float = Field(1.0e-6, ge=0)  # certificate gap of the new λ, nats
    min_median_ess: float = Field(2.0, ge=0)  # median per-prompt effective sample size of the new λ
    max_agreement_drop: float = Field(
        0.05, ge=0, le=1
    )  # tonight's min-group agreement: new λ may trail the old λ by at most this
    max_drift: float = Field(
        0.2, ge=0, le=1
    )  # total variation ½‖λ − λ_latest‖₁: a bigger jump in one night wants a human look
    max_ci_width: float | None = Field(None, gt=0, le=1)  # widest 90% interval of any λ_k allowed (None: not checked)


class NightlyConfig(ScoringSection):
    """Nightly reweighting over fresh prompts and feedback into a versioned weights store (`mpo-ray nightly`).

    ``{night}`` in ``prompts`` and ``feedback`` is replaced by the night id
    (default: today's UTC date), so one config serves every night. The score
    table, sampling and solver settings mean what they mean under ``reweight``.
    """

    store: str
    feedback: str | None = None  # preference pairs: prompt, chosen, rejected, group (a policy name)
    night: (
        Annotated[str, _matching(NIGHT_ID, "use a date such as 2025-06-01 (letters, digits, '.', '_', '-')")] | None
    ) = None
    gate: GateConfig = Field(default_factory=GateConfig)
    lock_timeout_s: float = Field(600.0, gt=0)  # a store lock older than this was left by a crashed run and is broken

    @property
    def ess_floor(self) -> float:
        return self.gate.min_median_ess

    @model_validator(mode="after")
    def _gate_can_pass(self):
        ess, n = self.gate.min_median_ess, self.sampling.samples_per_prompt
        if ess > n:
            raise Invalid(
                "gate.min_median_ess",
                f"is {ess}, but the ESS is at most sampling.samples_per_prompt = {n}, "
                "so no night could pass; lower it or sample more.",
            )
        if self.gate.max_ci_width is not None and self.bootstrap_resamples == 0:
            raise Invalid("gate.max_ci_width", "needs λ's intervals; set `bootstrap_resamples` above 0.")
        return self
