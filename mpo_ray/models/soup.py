"""Rewarded Soups (Ramé et al., 2023): one adapter whose weights are the λ-average of K LoRA adapters.

The paper's weight-space baseline to MPO's output-space mixture: interpolate the
fine-tuned parameters, θ = Σ_k λ_k θ_k, here every LoRA factor (A and B) of
adapters trained on one base with one LoRA configuration. The soup is an
ordinary adapter directory, so it loads, scores and decodes like any policy.

With equal scalings s, the soup's update s·(Σ λ_k B_k)(Σ λ_k A_k) is what peft's
``add_weighted_adapter(combination_type="linear")`` builds from weights λ_k²
(it puts √(w_k s) on each factor): the tests check the two agree.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mpo_ray.core.errors import UserError

_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_SHAPE_KEYS = (
    "r",
    "lora_alpha",
    "target_modules",
    "layers_to_transform",
    "base_model_name_or_path",
    "fan_in_fan_out",
    "use_rslora",
    "use_dora",
    "bias",
)


def _shape(config: dict) -> dict:
    """The settings that must agree for a parameter average to mean anything (module lists compared as sets)."""
    return {
        k: sorted(v) if isinstance(v, list) and k == "target_modules" else v
        for k, v in config.items()
        if k in _SHAPE_KEYS
    }


def rewarded_soup(adapters: list[str | os.PathLike], weights: list[float], output: str | os.PathLike) -> Path:
    """Write the λ-averaged adapter to ``output`` (a new directory); returns it."""
    import torch
    from safetensors.torch import load_file, save_file

    if len(adapters) != len(weights) or not adapters:
        raise UserError(
            f"a soup needs one weight per adapter, got {len(adapters)} adapters and {len(weights)} weights."
        )
    if any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise UserError(
            f"soup weights must be non-negative and sum to 1 (a point on the simplex), got {list(weights)}."
        )
    configs = [json.loads((Path(a) / _CONFIG).read_text()) for a in adapters]
    for a, c in zip(adapters[1:], configs[1:]):
        differs = [k for k in _SHAPE_KEYS if _shape(c).get(k) != _shape(configs[0]).get(k)]
        if differs:
            raise UserError(
                f"adapter {str(a)!r} differs from {str(adapters[0])!r} in {differs}; a soup averages adapters "
                "trained on one base with one LoRA configuration."
            )
    tensors = [load_file(str(Path(a) / _WEIGHTS)) for a in adapters]
    if any(t.keys() != tensors[0].keys() for t in tensors[1:]):
        raise UserError("the adapters hold different LoRA modules; a soup needs the same modules in every adapter.")
    soup = {
        name: sum(float(w) * t[name].to(torch.float32) for w, t in zip(weights, tensors)).to(tensors[0][name].dtype)
        for name in tensors[0]
    }
    output = Path(output)
    if output.exists():
        raise UserError(f"soup output {str(output)!r} exists; choose a new directory.")
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(soup, str(tmp / _WEIGHTS))
    (tmp / _CONFIG).write_text(json.dumps(configs[0], indent=2) + "\n")
    (tmp / "soup.json").write_text(
        json.dumps({"adapters": [str(a) for a in adapters], "weights": list(weights)}) + "\n"
    )
    os.replace(tmp, output)
    return output
