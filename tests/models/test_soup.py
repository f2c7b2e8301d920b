"""Rewarded Soups: the λ-average of LoRA adapters, checked against peft's weighted merge."""

import pytest
import torch

from mpo_ray.models.soup import rewarded_soup
from mpo_ray.testing import build_lora_adapter, build_tiny_model


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    base = build_tiny_model(root / "base", seed=0)
    return base, [build_lora_adapter(base, root / f"lora{i}", seed=10 + i, scale=0.2) for i in range(3)]


def delta_weights(base, adapter_dirs, names, merged=None):
    """Each named adapter's ΔW per LoRA module, from peft itself."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), str(adapter_dirs[0]), adapter_name=names[0]
    )
    for name, path in zip(names[1:], adapter_dirs[1:]):
        model.load_adapter(str(path), adapter_name=name)
    if merged:
        model.add_weighted_adapter(names, merged, "merged", combination_type="linear")
        names = [*names, "merged"]
    out = {n: {} for n in names}
    for module_name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A"):
            for n in names:
                if n in module.lora_A:
                    out[n][module_name] = module.get_delta_weight(n).detach()
    return out


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
def test_the_soup_equals_the_peft_weighted_merge(adapters, tmp_path, weights):
    base, dirs = adapters
    soup = rewarded_soup(dirs, weights, tmp_path / "soup")
    ours = delta_weights(base, [soup], ["soup"])["soup"]
    theirs = delta_weights(base, dirs, ["a", "b", "c"], merged=[w * w for w in weights])["merged"]
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_a_vertex_of_the_simplex_is_that_adapter(adapters, tmp_path):
    base, dirs = adapters
    soup = rewarded_soup(dirs, [0.0, 1.0, 0.0], tmp_path / "vertex")
    ours = delta_weights(base, [soup], ["soup"])["soup"]
    single = delta_weights(base, [dirs[1]], ["b"])["b"]
    for name in ours:
        torch.testing.assert_close(ours[name], single[name])


def test_bad_soups_are_refused(adapters, tmp_path):
    _, dirs = adapters
    with pytest.raises(ValueError, match="sum to 1"):
        rewarded_soup(dirs, [0.5, 0.5, 0.5], tmp_path / "x")
    with pytest.raises(ValueError, match="one weight per adapter"):
        rewarded_soup(dirs, [1.0], tmp_path / "y")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        rewarded_soup(dirs, [1.0, 0.0, 0.0], tmp_path / "taken")


def test_module_lists_in_another_order_are_the_same_configuration(adapters, tmp_path):
    import json
    import shutil

    _, dirs = adapters
    shuffled = tmp_path / "shuffled"
    shutil.copytree(dirs[1], shuffled)
    config = json.loads((shuffled / "adapter_config.json").read_text())
    config["target_modules"] = list(reversed(sorted(config["target_modules"])))
    (shuffled / "adapter_config.json").write_text(json.dumps(config))
    assert rewarded_soup([dirs[0], shuffled], [0.5, 0.5], tmp_path / "soup").exists()


def test_sweep_soups_are_built_once_and_refused_without_adapters(adapters, tmp_path):
    """`sweep --soup` (and the demo): one soup per λ, reused when a sweep resumes; policies that are not
    LoRA adapters of one base get a one-line reason, not a traceback."""
    from mpo_ray.config import config_from_dict
    from mpo_ray.core.errors import UserError
    from mpo_ray.workflows.sweep import soup_specs

    base, dirs = adapters
    data = {
        "reference": {"name": "ref", "model": str(base)},
        "policies": [{"name": f"p{i}", "model": str(base), "adapter": str(d)} for i, d in enumerate(dirs)],
    }
    config = config_from_dict(data, source="test")
    specs = soup_specs(config, str(tmp_path / "soups"), {"soup": [1 / 3] * 3, "soup_mpo": [0.6, 0.3, 0.1]})
    assert [s.name for s in specs.values()] == ["soup", "soup_mpo"] and specs["soup"].model == str(base)
    made = (tmp_path / "soups" / "soup_mpo" / "adapter_model.safetensors").stat().st_mtime_ns
    again = soup_specs(config, str(tmp_path / "soups"), {"soup_mpo": [0.6, 0.3, 0.1]})  # a resumed sweep
    assert again["soup_mpo"].adapter == specs["soup_mpo"].adapter
    assert (tmp_path / "soups" / "soup_mpo" / "adapter_model.safetensors").stat().st_mtime_ns == made
    with pytest.raises(UserError, match="exists"):  # another λ under the same label is not silently replaced
        soup_specs(config, str(tmp_path / "soups"), {"soup_mpo": [0.2, 0.3, 0.5]})
    data["policies"][1] = {"name": "p1", "model": str(base), "system_prompt": "Be brief."}
    with pytest.raises(UserError, match=r"policies \['p1'\] have no `adapter`"):
        soup_specs(config_from_dict(data, source="test"), str(tmp_path / "other"), {"soup": [1 / 3] * 3})
