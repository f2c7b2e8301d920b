"""The demo's three single-objective policies: DPO-trained LoRA adapters on SmolLM2.

Objectives, chosen because a program can measure them (no reward model from a
hub) and because they pull against each other:

* ``concise``      — fewer words (`objectives.brevity`);
* ``relevant``     — uses the prompt's own content words (`objectives.relevance`);
* ``enthusiastic`` — upbeat words and exclamation marks per word (`objectives.enthusiasm`).

Each policy costs another objective (short or upbeat answers drift off the
question), yet one answer can win on all three, which is what makes a MaxMin
mixture worth having (unlike fewer words against more words, where nothing wins
on both).

Recipe (the MPO paper's way of making π_k): sample responses to the training
prompts from π_ref itself, rank them by the objective's score, pair best with
worst, train a LoRA adapter with DPO. The adapters ship in
``mpo_ray/demo/data/adapters/``; `mpo-ray train-demo-policies` rebuilds them.

Whose files: another --output is refused unless it is new, empty or made by this command (`io.ownership`); the
shipped directory is this command's by shipping. An adapter is replaced file by file, only the files training
writes, so a user's notes beside them stay. torch loads only once training starts: a refused output costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpo_ray.core.errors import UserError
from mpo_ray.demo import objectives
from mpo_ray.io import storage
from mpo_ray.io.ownership import check_ours, mark_ours

if TYPE_CHECKING:
    from mpo_ray.demo.dpo import DPOConfig

log = logging.getLogger(__name__)
OBJECTIVES = {"concise": objectives.brevity, "relevant": objectives.relevance, "enthusiastic": objectives.enthusiasm}
REWARDS = {
    "concise": "brevity",
    "relevant": "relevance",
    "enthusiastic": "enthusiasm",
}  # policy → its objective function
DATA_DIR = Path(__file__).parent / "data"
ADAPTER_DIR = DATA_DIR / "adapters"
PROMPTS = DATA_DIR / "demo_prompts.jsonl"
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
KIND = "train-demo-policies"  # the owner marker's kind
ADAPTER_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
)  # what peft saves, config last


def _dpo_config() -> DPOConfig:
    from mpo_ray.demo.dpo import DPOConfig  # torch: imported when a config is made, not with this module

    return DPOConfig()


@dataclass
class TrainDemoConfig:
    train_prompts: int = 160
    samples_per_prompt: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.8  # pairs from readable samples; the adapters are scored untempered later anyway
    eval_prompts: int = 48
    eval_temperature: float = 0.7
    min_score_gap: float = 1e-6  # pairs whose two responses score the same teach nothing
    seed: int = 0
    dpo: DPOConfig = field(default_factory=_dpo_config)
    # Length is the easiest signal to learn: 60 steps drove `concise` to a reward margin of 9 and
    # gibberish (measured); 36 steps shorten answers and keep them English.
    max_steps: dict = field(default_factory=lambda: {"concise": 36})


def demo_prompts(split: str | None = None) -> list[dict]:
    """The project's demo corpus: 450 prompts, split 'train' (200, for the adapters), 'reweight' (50)
    and 'eval' (200, held out from both: the first 50 from the corpus the adapters were trained with, the
    other 150, demo-0300 on, added for `--eval-prompts` up to 200, on topics no training prompt mentions)."""
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def adapter_paths(root: str | os.PathLike = ADAPTER_DIR) -> dict[str, Path]:
    """name → adapter directory, checked: a clear error when an adapter is missing."""
    paths = {name: Path(root) / name for name in OBJECTIVES}
    missing = [str(p) for p in paths.values() if not (p / "adapter_config.json").exists()]
    if missing:
        raise UserError(f"demo adapters missing: {missing}; rebuild them with `mpo-ray train-demo-policies`")
    return paths


def check_output(output: str | os.PathLike) -> bool:
    """Whether ``output`` may take the adapters: UserError (one line, nothing loaded yet) for a file, a symbolic link
    where an adapter goes, or a non-empty directory this command did not make. True for the shipped adapter
    directory: it ships with the package, so it is this command's without a marker (none is written there)."""
    output = Path(output)
    shipped = output.resolve() == ADAPTER_DIR.resolve()
    links = [name for name in OBJECTIVES if (output / name).is_symlink()]
    if shipped and links:
        raise UserError(
            f"--output {str(output)!r}: {links[0]!r} in it is a symbolic link; the adapters are never "
            "written through one. Replace the link with a directory."
        )
    if not shipped:
        check_ours(str(output), KIND, what="--output", subdirs=tuple(OBJECTIVES))
    storage.check_writable(str(output))
    return shipped


def install_adapter(new: str | os.PathLike, final: str | os.PathLike) -> list[str]:
    """Move a freshly saved adapter (the directory ``new``, emptied and removed) into ``final`` file by file: each
    file replaces the one of its name (`os.replace`: atomic, and a link is replaced, never written through),
    adapter files of an older save that this one lacks go, and anything else in ``final`` (a user's notes) stays,
    named in a warning. Never a whole directory: ``final`` may hold files that are not ours. Returns those."""
    new, final = Path(new), Path(final)
    if final.is_symlink():
        raise UserError(
            f"adapter directory {str(final)!r} is a symbolic link; the adapters are never written through "
            "one. Replace the link with a directory, then rerun."
        )
    final.mkdir(exist_ok=True)
    names = sorted(
        (p.name for p in new.iterdir()), key=lambda n: ADAPTER_FILES.index(n) if n in ADAPTER_FILES else -1
    )  # the config goes in last
    for name in names:
        os.replace(new / name, final / name)
    new.rmdir()
    for name in ADAPTER_FILES:
        old = final / name
        if name not in names and old.is_file() and not old.is_symlink():
            old.unlink()
    left = sorted(p.name for p in final.iterdir() if p.name not in names)
    if left:
        log.warning("left alone in %s (train-demo-policies did not write them): %s", final, ", ".join(left))
    return left


def _discard(tmp: Path) -> None:
    """Remove a temporary adapter directory this run made (its files are all this run's), file by file."""
    if tmp.is_dir() and not tmp.is_symlink():
        for p in tmp.iterdir():
            if p.is_file() or p.is_symlink():
                p.unlink()
        try:
            tmp.rmdir()
        except OSError:
            log.warning("could not remove %s; it holds something training did not write", tmp)


def _log(msg: str, quiet: bool):
    log.log(logging.DEBUG if quiet else logging.INFO, msg)


def build_pairs(prompts: list[str], samples, score_fn, min_gap: float):
    """Best vs worst of each prompt's samples by `score_fn`; prompts whose samples tie are dropped."""
    keep, chosen, rejected = [], [], []
    for i, (prompt, group) in enumerate(zip(prompts, samples)):
        scores = np.asarray(score_fn([prompt] * len(group), [g.text for g in group]))
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] - scores[worst] > min_gap and group[best].token_ids and group[worst].token_ids:
            keep.append(i)
            chosen.append(group[best].token_ids)
            rejected.append(group[worst].token_ids)
    return keep, chosen, rejected


def mean_scores(policy_texts: dict[str, list[str]], prompts: list[str]) -> dict[str, dict[str, float]]:
    """Mean objective score of each policy's responses: policy → objective → mean."""
    return {
        name: {obj: float(np.mean(fn(prompts, texts))) for obj, fn in OBJECTIVES.items()}
        for name, texts in policy_texts.items()
    }


def _self_samples(ref, prompts: list[str], config: TrainDemoConfig, cache: Path, quiet: bool):
    """π_ref's own responses to the training prompts (the pairs' raw material), cached in `cache`
    keyed by the sampling settings, so a rerun with other DPO settings skips the slowest part."""
    from mpo_ray.models.decoding import Generation, MixedPolicy

    key = {
        "prompts": prompts,
        "n": config.samples_per_prompt,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "seed": config.seed,
    }
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            _log(f"reusing π_ref's samples from {cache}", quiet)
            return [[Generation(**g) for g in group] for group in saved["samples"]]
    _log(
        f"sampling {config.samples_per_prompt} responses for each of {len(prompts)} training prompts from π_ref ...",
        quiet,
    )
    sampler, samples = MixedPolicy([ref], [1.0]), []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i : i + 16]
        samples += sampler.sample_candidates(
            chunk,
            config.samples_per_prompt,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=[config.seed * 100_003 + j for j in range(i, i + len(chunk))],
        )
        _log(f"  {i + len(chunk)}/{len(prompts)} prompts", quiet)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "samples": [[asdict(g) for g in group] for group in samples]}))
    return samples


def train_demo_policies(
    output: str | os.PathLike = ADAPTER_DIR,
    config: TrainDemoConfig | None = None,
    *,
    only: list[str] | None = None,
    quiet: bool = False,
) -> dict:
    """Sample, rank, DPO-train one adapter per objective, check each moved its objective; write `output`.

    ``output`` is checked before anything loads (`check_output`). Each adapter is saved to a temporary directory,
    then installed file by file (`install_adapter`, a few renames): a run stopped while training leaves the previous
    adapters as they were, and nothing but the files training writes is ever replaced.
    """
    unknown = sorted(set(only or ()) - set(OBJECTIVES))
    if unknown:
        raise UserError(f"unknown objective(s) {unknown}; choose from {list(OBJECTIVES)}")
    shipped = check_output(output)
    output = Path(output)

    import torch
    from transformers import AutoModelForCausalLM

    from mpo_ray.config import PolicySpec
    from mpo_ray.demo.dpo import PreferencePairs, train_dpo
    from mpo_ray.io.cache import cache_dir
    from mpo_ray.models.decoding import MixedPolicy
    from mpo_ray.models.policies import load_policies, resolve_model

    config = config or TrainDemoConfig()
    torch.manual_seed(config.seed)
    t_start = time.perf_counter()
    train = demo_prompts("train")[: config.train_prompts]
    test = demo_prompts("eval")[: config.eval_prompts]
    (ref,) = load_policies([PolicySpec(name="ref", model="default")])
    prompts = [r["prompt"] for r in train]
    samples = _self_samples(ref, prompts, config, cache_dir() / "demo-self-samples.json", quiet)
    t_sampled = time.perf_counter()
    prompt_ids = ref.encode_prompts(prompts)
    summary = {"config": asdict(config), "base_model": BASE_MODEL_ID, "objectives": {}}
    if only and (output / "training.json").exists():  # retrain some adapters, keep the others' records
        kept = json.loads((output / "training.json").read_text())["objectives"]
        summary["objectives"] = {obj: rec for obj, rec in kept.items() if obj in OBJECTIVES}

    for obj, fn in OBJECTIVES.items():
        if only and obj not in only:
            continue
        keep, chosen, rejected = build_pairs(prompts, samples, fn, config.min_score_gap)
        if not keep:
            raise RuntimeError(f"no preference pairs for {obj!r}: every prompt's samples scored the same")
        pairs = PreferencePairs([prompt_ids[i] for i in keep], chosen, rejected)
        _log(f"training {obj!r} with DPO on {len(pairs)} pairs ...", quiet)
        base = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
        t0 = time.perf_counter()

        def progress(step, total, h):
            if step == total or step % 10 == 0:
                _log(
                    f"  step {step}/{total}: loss {h['loss']:.3f}, reward margin {h['margin']:.2f}, "
                    f"accuracy {h['accuracy']:.2f}",
                    quiet,
                )

        dpo = dataclasses.replace(config.dpo, max_steps=config.max_steps.get(obj, config.dpo.max_steps))
        model, history = train_dpo(base, pairs, dpo, pad_id=ref.pad_token_id, progress=progress)
        if not shipped:
            mark_ours(str(output), KIND)  # just before the first file: a run refused earlier leaves nothing
        output.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{obj}-", dir=output))
        try:
            model.save_pretrained(tmp)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card; training.json says it all
            cfg_path = tmp / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = BASE_MODEL_ID  # not this machine's cache path
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True))
            install_adapter(tmp, output / obj)
        finally:
            _discard(tmp)
        summary["objectives"][obj] = {
            "pairs": len(pairs),
            "steps": len(history),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final": history[-1],
            "history": history,
        }
    t_trained = time.perf_counter()

    # Did each adapter move its own objective? Held-out prompts, same seeds for every policy.
    specs = [PolicySpec(name="ref", model="default")] + [
        PolicySpec(name=obj, model="default", adapter=str(output / obj)) for obj in OBJECTIVES
    ]
    policies = load_policies(specs)
    eval_prompts = [r["prompt"] for r in test]
    texts = {}
    for policy in policies:
        _log(f"evaluating {policy.name!r} on {len(eval_prompts)} held-out prompts ...", quiet)
        gens = MixedPolicy([policy], [1.0]).generate(
            eval_prompts,
            max_new_tokens=config.max_new_tokens,
            temperature=config.eval_temperature,
            seed=[config.seed + 7 + j for j in range(len(eval_prompts))],
        )
        texts[policy.name] = [g.text for g in gens]
    means = mean_scores(texts, eval_prompts)
    summary["held_out_means"] = means
    summary["moved_as_intended"] = {obj: means[obj][obj] > means["ref"][obj] for obj in OBJECTIVES}
    summary["examples"] = {name: texts[name][:3] for name in texts}
    summary["retrained"] = list(only) if only else list(OBJECTIVES)
    summary["seconds"] = {
        "sampling": round(t_sampled - t_start, 1),
        "training": round(t_trained - t_sampled, 1),
        "evaluation": round(time.perf_counter() - t_trained, 1),
        "total": round(time.perf_counter() - t_start, 1),
    }
    storage.write_text(str(output / "training.json"), json.dumps(summary, indent=2))  # atomic; replaces a link, never
    storage.write_text(str(output / "README.md"), _training_report(summary))  # writes through it
    _log(_training_report(summary), quiet)
    return summary


def _training_report(s: dict) -> str:
    objs = list(OBJECTIVES)
    lines = [
        "# Demo adapters: DPO-trained LoRA policies on SmolLM2-135M-Instruct",
        "",
        f"Last run of `mpo-ray train-demo-policies` (trained {', '.join(s.get('retrained', objs))}): "
        f"{s['seconds']['total']:.0f} s (sampling {s['seconds']['sampling']:.0f} s, training "
        f"{s['seconds']['training']:.0f} s, evaluation {s['seconds']['evaluation']:.0f} s; π_ref's samples are "
        "cached in ~/.cache/mpo-ray after the first run). Settings and every step's loss: `training.json`.",
        "",
        "| objective | pairs | steps | final DPO loss | reward margin | pair accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for obj in objs:
        o = s["objectives"][obj]
        lines.append(
            f"| {obj} | {o['pairs']} | {o.get('steps', len(o['history']))} | "
            f"{o['final']['loss']:.3f} | {o['final']['margin']:.2f} | "
            f"{o['final']['accuracy']:.2f} |"
        )
    lines += [
        "",
        "Mean objective score on held-out prompts (each adapter should beat `ref` on its own column):",
        "",
        "| policy | " + " | ".join(objs) + " |",
        "|---" * (len(objs) + 1) + "|",
    ]
    for name, row in s["held_out_means"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[o]:.2f}" for o in objs) + " |")
    moved = s["moved_as_intended"]
    lines += [
        "",
        "Moved its own objective in the intended direction: "
        + ", ".join(f"{o} {'yes' if moved[o] else 'NO'}" for o in objs),
        "",
    ]
    return "\n".join(lines)
