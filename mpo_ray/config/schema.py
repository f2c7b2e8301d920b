"""Typed, validated configuration: one YAML file describes one mixture.

A config names the reference model, the K policies (one per objective), any
reward sources, β, and one section per workflow. Each command reads the
sections it needs. Unknown keys and wrong types are errors that name the key
path and the file, so a typo never silently falls back to a default.

    beta: 0.1
    reference: {name: ref, model: HuggingFaceTB/SmolLM2-135M-Instruct}
    policies:
      - {name: helpful, model: ..., adapter: ./adapters/helpful}
      - {name: harmless, model: ..., system_prompt: "Be careful."}
    reweight:
      prompts: s3://bucket/prompts.parquet
      samples_per_prompt: 8
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

import yaml


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PolicySpec:
    """How to load one policy. `model` is a local HF directory, a hub id, or
    "default" (the embedded SmolLM2-135M-Instruct). `dtype="auto"` means bfloat16
    on GPU and float32 on CPU; `device=None` means cuda when available."""

    name: str
    model: str
    adapter: str | None = None
    system_prompt: str | None = None
    dtype: str = "auto"
    device: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"PolicySpec.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"PolicySpec {self.name!r}: model must be a local path or hub id, got {self.model!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(
                f"PolicySpec {self.name!r}: dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}"
            )


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class RewardSpec:
    """A reward source for one objective: a HF sequence-classification model or a Python function.

    ``function`` is ``"module:function"``, called as ``fn(prompts, responses) -> list[float]``.
    ``objective`` names the policy whose objective this reward measures; it is
    needed when rewards drive the solver (``estimate: rewards``).
    """

    name: str
    function: str | None = None
    model: str | None = None
    objective: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str | None = None
    batch_size: int = 16
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ResourcesConfig:
    """How model actors use the cluster. ``None`` means: decide from what the cluster has."""

    gpus_per_model: float | None = None  # 1 when the cluster has GPUs, else 0
    cpus_per_model: float = 1.0
    replicas: int | None = None  # per model; default: spare GPUs spread over the models, else 1
    max_restarts: int = 3
    max_task_retries: int = 3
    startup_timeout_s: float = 900.0  # actors that cannot be placed (or load) by then fail the run clearly


@dataclass(frozen=True)
class SolverConfig:
    method: Literal["full", "bsmd"] = "full"
    tol: float = 1e-9
    steps: int | None = None
    step_size: float | None = None
    batch_prompts: int = 1  # BSMD prompts per step (the paper: 1)


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are drawn for the score table. Untempered by default: the estimator assumes y ~ π_ref."""

    samples_per_prompt: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    proposal: Literal["reference", "mixture"] = "reference"


@dataclass(frozen=True)
class ReweightConfig:
    prompts: str
    prompt_column: str = "prompt"
    id_column: str = "prompt_id"
    max_prompts: int | None = None
    batch_prompts: int = 16
    output: str | None = None
    estimate: Literal["implicit", "rewards"] = "implicit"
    stream_bsmd: bool = True  # run BSMD as batches arrive (the paper's way) before the full solve
    min_median_ess: float = 2.0  # warn below this
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)


@dataclass(frozen=True)
class GenerateConfig:
    """Bulk generation through the mixed policy (`mpo-ray generate`).

    Weights come from ``weights_uri`` (a weights.json written by `mpo-ray
    reweight`, or a weights store of `mpo-ray nightly`, meaning its `latest`, or
    ``<store>/versions/<night>`` pinned; the version goes into every row) or explicitly from ``weights``
    (a list in policy order, or {policy name: λ}). ``concurrency`` is the number
    of replicas, each hosting all K policies; ``gpus_per_replica`` defaults to 1
    when the cluster has GPUs (raise it to K to put each policy on its own GPU).
    """

    prompts: str
    output: str | None = None
    prompt_column: str = "prompt"
    id_column: str = "prompt_id"
    weights_uri: str | None = None
    weights: dict[str, float] | list[float] | None = None
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    num_candidates: int = 1  # > 1: sequence-level resampling among n token-level samples
    batch_size: int = 16  # prompts per MixedPolicy.generate call
    concurrency: int | None = None  # replicas; default: one per GPU group, else 1
    gpus_per_replica: float | None = None
    cpus_per_replica: float | None = None  # default: the cluster's CPUs less one for reading/writing, shared
    rows_per_file: int = 1000  # rows per output file; a crash loses at most about this many finished rows


@dataclass(frozen=True)
class GateConfig:
    """When a night's weights may replace `latest`: every check must pass, else the old weights stay."""

    max_gap: float = 1.0e-6  # certificate gap of the new λ, nats
    min_median_ess: float = 2.0  # median per-prompt effective sample size of the new λ
    max_agreement_drop: float = 0.05  # tonight's min-group agreement: new λ may trail the old λ by at most this
    max_drift: float = 0.2  # total variation ½‖λ − λ_latest‖₁: a bigger jump in one night wants a human look


@dataclass(frozen=True)
class NightlyConfig:
    """Nightly reweighting over fresh prompts and feedback into a versioned weights store (`mpo-ray nightly`).

    ``{night}`` in ``prompts`` and ``feedback`` is replaced by the night id
    (default: today's UTC date), so one config serves every night. The score
    table, sampling and solver settings mean what they mean under ``reweight``.
    """

    prompts: str
    store: str
    feedback: str | None = None  # preference pairs: prompt, chosen, rejected, group (a policy name)
    night: str | None = None
    prompt_column: str = "prompt"
    id_column: str = "prompt_id"
    max_prompts: int | None = None
    batch_prompts: int = 16
    estimate: Literal["implicit", "rewards"] = "implicit"
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    lock_timeout_s: float = 600.0  # a store lock older than this was left by a crashed run and is broken


@dataclass(frozen=True)
class Config:
    reference: PolicySpec
    policies: list[PolicySpec]
    beta: float = 0.1
    rewards: list[RewardSpec] = field(default_factory=list)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    reweight: ReweightConfig | None = None
    generate: GenerateConfig | None = None
    nightly: NightlyConfig | None = None
    source: str = "<dict>"  # where it came from, for error messages

    @property
    def policy_names(self) -> list[str]:
        return [p.name for p in self.policies]

    def section(self, name: str):
        """The workflow section ``name``, or a clear error when the file has none."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{self.source} has no `{name}:` section; add one to run `mpo-ray {name}`.")
        return value


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


class ConfigError(ValueError):
    pass


def load_config(path: str, overrides: dict | None = None) -> Config:
    """Read and validate a YAML config file. Relative local paths resolve against the file's directory."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; see workflows/configs/tiny.yaml for an example.")
    return config_from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)), overrides=overrides)


def config_from_dict(data, *, source: str = "<dict>", base_dir: str | None = None, overrides: dict | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}.")
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    data.pop("source", None)
    config = _build(Config, data, "", source)
    config = dataclasses.replace(config, source=source)
    _check_semantics(config)
    return _resolve_paths(config, base_dir) if base_dir else config


def _build(tp, value, key: str, source: str):
    """Convert ``value`` into type ``tp`` or raise ConfigError naming ``key`` and ``source``."""
    where = f"{source}: `{key or '<top level>'}`"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:  # the first alternative that fits; the last one's error otherwise
            try:
                return _build(alternative, value, key, source)
            except ConfigError:
                pass
        return _build(inner[-1], value, key, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}.")
        return [_build(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}.")
        return {_build(args[0], k, key, source): _build(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}.")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.name != "source"}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            prefix = f"{key}." if key else ""
            raise ConfigError(f"{source}: unknown key `{prefix}{unknown[0]}`; allowed here: {sorted(fields)}.")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], f"{key}.{name}" if key else name, source)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: `{key + '.' if key else ''}{name}` is required.")
        try:
            return tp(**kwargs)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if tp in (int, bool, str):
        if type(value) is not tp:
            raise ConfigError(f"{where} must be {tp.__name__}, got {value!r} ({type(value).__name__}).")
        return value
    raise TypeError(f"config type {tp!r} is not supported")  # a bug in this module, not in the file


def _check_semantics(c: Config) -> None:
    src = c.source
    if not c.policies:
        raise ConfigError(f"{src}: `policies` is empty; list at least one policy (one per objective).")
    names = [c.reference.name, *c.policy_names]
    for n in names + [r.name for r in c.rewards]:
        if not _NAME.match(n):
            raise ConfigError(f"{src}: name {n!r} must start with a letter and use only letters, digits, '_' or '-' (it becomes a column name).")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{src}: names must be unique across reference and policies; {dupes} repeats.")
    if not (c.beta > 0):
        raise ConfigError(f"{src}: `beta` must be > 0 (the KL strength the policies were aligned with), got {c.beta}.")
    for i, r in enumerate(c.rewards):
        if (r.function is None) == (r.model is None):
            raise ConfigError(f"{src}: `rewards[{i}]` ({r.name}) needs exactly one of `function` (module:function) or `model`.")
        if r.function is not None and not re.match(r"^[\w.]+:[\w.]+$", r.function):
            raise ConfigError(f"{src}: `rewards[{i}].function` must look like 'package.module:function', got {r.function!r}.")
        if r.objective is not None and r.objective not in c.policy_names:
            raise ConfigError(f"{src}: `rewards[{i}].objective` is {r.objective!r}, not one of the policies {c.policy_names}.")
    rw = c.reweight
    if rw is not None:
        s = rw.sampling
        _positive(src, "reweight.batch_prompts", rw.batch_prompts)
        _positive(src, "reweight.sampling.samples_per_prompt", s.samples_per_prompt)
        _positive(src, "reweight.sampling.max_new_tokens", s.max_new_tokens)
        if rw.max_prompts is not None:
            _positive(src, "reweight.max_prompts", rw.max_prompts)
        if not s.temperature > 0:
            raise ConfigError(f"{src}: `reweight.sampling.temperature` must be > 0, got {s.temperature}.")
        if s.top_p is not None and not 0 < s.top_p <= 1:
            raise ConfigError(f"{src}: `reweight.sampling.top_p` must be in (0, 1], got {s.top_p}.")
        if s.top_k is not None:
            _positive(src, "reweight.sampling.top_k", s.top_k)
        if s.proposal == "mixture" and (s.temperature != 1.0 or s.top_k or s.top_p):
            raise ConfigError(f"{src}: `reweight.sampling.proposal: mixture` needs untempered sampling (temperature 1, no top_k/top_p).")
        if rw.estimate == "rewards":
            covered = {r.objective for r in c.rewards}
            missing = [p for p in c.policy_names if p not in covered]
            if missing or len(c.rewards) != len(c.policies):
                raise ConfigError(
                    f"{src}: `reweight.estimate: rewards` needs exactly one reward source per policy (set `objective:` on each); "
                    f"policies without one: {missing}."
                )
    if c.generate is not None:
        _check_generate(c)
    if c.nightly is not None:
        _check_nightly(c)
    res = c.resources
    if res.replicas is not None:
        _positive(src, "resources.replicas", res.replicas)
    if res.max_restarts < 0 or res.max_task_retries < 0:
        raise ConfigError(f"{src}: `resources.max_restarts` and `max_task_retries` must be >= 0.")


def _check_generate(c: Config) -> None:
    g, src = c.generate, c.source
    for key in ("max_new_tokens", "num_candidates", "batch_size", "rows_per_file"):
        _positive(src, f"generate.{key}", getattr(g, key))
    for key in ("concurrency", "top_k"):
        if getattr(g, key) is not None:
            _positive(src, f"generate.{key}", getattr(g, key))
    if not g.temperature >= 0:
        raise ConfigError(f"{src}: `generate.temperature` must be >= 0 (0 = greedy), got {g.temperature}.")
    if g.num_candidates > 1 and g.temperature == 0:
        raise ConfigError(f"{src}: `generate.num_candidates` > 1 needs sampling (greedy candidates are identical); set temperature > 0.")
    if g.top_p is not None and not 0 < g.top_p <= 1:
        raise ConfigError(f"{src}: `generate.top_p` must be in (0, 1], got {g.top_p}.")
    if g.seed < 0:
        raise ConfigError(f"{src}: `generate.seed` must be >= 0, got {g.seed}.")
    if not all(g.stop):
        raise ConfigError(f"{src}: `generate.stop` must list non-empty strings, got {g.stop}.")
    if g.gpus_per_replica is not None and g.gpus_per_replica < 0:
        raise ConfigError(f"{src}: `generate.gpus_per_replica` must be >= 0, got {g.gpus_per_replica}.")
    if g.cpus_per_replica is not None and not g.cpus_per_replica > 0:
        raise ConfigError(f"{src}: `generate.cpus_per_replica` must be > 0, got {g.cpus_per_replica}.")
    if g.weights is not None and g.weights_uri is not None:
        raise ConfigError(f"{src}: set one of `generate.weights_uri` (a weights.json from `mpo-ray reweight`) or `generate.weights`, not both.")
    names = c.policy_names
    if isinstance(g.weights, list) and len(g.weights) != len(names):
        raise ConfigError(f"{src}: `generate.weights` has {len(g.weights)} entries for {len(names)} policies {names}; give one per policy, in order.")
    if isinstance(g.weights, dict) and sorted(g.weights) != sorted(names):
        raise ConfigError(f"{src}: `generate.weights` names {sorted(g.weights)}, but the policies are {names}; give one weight per policy name.")


NIGHT_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")  # a night id names a store version: a safe path segment


def _check_nightly(c: Config) -> None:
    n, src = c.nightly, c.source
    s = n.sampling
    for key, value in (("batch_prompts", n.batch_prompts), ("sampling.samples_per_prompt", s.samples_per_prompt),
                       ("sampling.max_new_tokens", s.max_new_tokens), ("max_prompts", n.max_prompts), ("sampling.top_k", s.top_k)):
        if value is not None:
            _positive(src, f"nightly.{key}", value)
    if not s.temperature > 0:
        raise ConfigError(f"{src}: `nightly.sampling.temperature` must be > 0, got {s.temperature}.")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        raise ConfigError(f"{src}: `nightly.sampling.top_p` must be in (0, 1], got {s.top_p}.")
    if s.proposal == "mixture" and (s.temperature != 1.0 or s.top_k or s.top_p):
        raise ConfigError(f"{src}: `nightly.sampling.proposal: mixture` needs untempered sampling (temperature 1, no top_k/top_p).")
    if n.estimate == "rewards" and sorted(r.objective or "" for r in c.rewards) != sorted(c.policy_names):
        raise ConfigError(f"{src}: `nightly.estimate: rewards` needs exactly one reward source per policy (set `objective:` on each).")
    if n.night is not None and not NIGHT_ID.match(n.night):
        raise ConfigError(f"{src}: `nightly.night` must be a date such as 2025-06-01 (letters, digits, '.', '_', '-'), got {n.night!r}.")
    g = n.gate
    if g.max_gap < 0 or g.min_median_ess < 0:
        raise ConfigError(f"{src}: `nightly.gate.max_gap` and `min_median_ess` must be >= 0.")
    if g.min_median_ess > s.samples_per_prompt:
        raise ConfigError(f"{src}: `nightly.gate.min_median_ess` is {g.min_median_ess}, but the ESS is at most "
                          f"samples_per_prompt = {s.samples_per_prompt}, so no night could pass; lower it or sample more.")
    for key in ("max_agreement_drop", "max_drift"):
        if not 0 <= getattr(g, key) <= 1:
            raise ConfigError(f"{src}: `nightly.gate.{key}` must be in [0, 1], got {getattr(g, key)}.")
    if not n.lock_timeout_s > 0:
        raise ConfigError(f"{src}: `nightly.lock_timeout_s` must be > 0, got {n.lock_timeout_s}.")


def _positive(src: str, key: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{src}: `{key}` must be >= 1, got {value}.")


def _local_output(p: str | None) -> str | None:
    """Outputs are where you run the command: relative local paths resolve against the working directory."""
    if p is None or "://" in p:
        return p
    return os.path.abspath(os.path.expanduser(p))


def _resolve_paths(c: Config, base_dir: str) -> Config:
    """Make relative local model/adapter/data paths relative to the config file, not the working directory."""

    def fix(p: str | None, must_look_local: bool) -> str | None:
        if p is None or "://" in p or os.path.isabs(p) or p.startswith(("default", "tiny:")):
            return p
        if must_look_local and not p.startswith((".", "~")):
            return p  # a hub id such as org/model
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(p)))

    def spec(s: PolicySpec) -> PolicySpec:
        return dataclasses.replace(s, model=fix(s.model, True), adapter=fix(s.adapter, False))

    rewards = [dataclasses.replace(r, model=fix(r.model, True)) for r in c.rewards]
    rw = c.reweight
    if rw is not None:
        rw = dataclasses.replace(rw, prompts=fix(rw.prompts, False), output=_local_output(rw.output))
    gen = c.generate
    if gen is not None:  # the weights are usually another command's output: resolved like outputs
        gen = dataclasses.replace(gen, prompts=fix(gen.prompts, False), output=_local_output(gen.output),
                                  weights_uri=_local_output(gen.weights_uri))
    nightly = c.nightly
    if nightly is not None:  # the store is this job's output and the next night's input: resolved like outputs
        nightly = dataclasses.replace(nightly, prompts=fix(nightly.prompts, False), feedback=fix(nightly.feedback, False),
                                      store=_local_output(nightly.store))
    return dataclasses.replace(
        c, reference=spec(c.reference), policies=[spec(p) for p in c.policies], rewards=rewards, reweight=rw,
        generate=gen, nightly=nightly,
    )
