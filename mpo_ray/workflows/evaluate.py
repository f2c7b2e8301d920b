"""Score generations with measurable objectives: means with confidence intervals,
win rates against reference generations, and the MaxMin view.

Objectives live on different scales (words, distinct words, upbeat words per
ten), so their raw means cannot be compared with each other; win rates against
π_ref's answers to the same prompts can, which makes "the minimum over
objectives" — a programmatic proxy for the MaxMin quantity MPO maximises — meaningful.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mpo_ray import __version__
from mpo_ray.core.errors import UserError
from mpo_ray.core.stats import (
    mean_ci,
    min_mean,
    paired_bootstrap,
    paired_difference,
    wilson,
    win_rates,
)
from mpo_ray.core.yardstick import implicit_objective
from mpo_ray.io import storage
from mpo_ray.io.ownership import FORMAT as OWNER_FORMAT
from mpo_ray.io.ownership import OWNER_FILE

REQUIRED = ("prompt_id", "prompt", "response")
GENERATION_KINDS = ("generate", "sweep")  # the workflows whose outputs are generations (`ownership` markers)
EVALUATION_FORMAT = "mpo-ray/evaluation"
_OURS = re.compile(r'\A\s*\{\s*"format"\s*:\s*"' + re.escape(EVALUATION_FORMAT) + '"')


def read_generations(uri: str) -> pa.Table:
    """A generation Parquet file or directory (the `generate` or `sweep` output), checked; error rows dropped.

    Refused in one line, never misread: a directory another workflow made (a reweight run's scores/ hold several
    samples per prompt, not generations); a file mpo-ray wrote that changed since (its content digest); a prompt
    id twice (a backup copy beside the original would count its rows twice). A renamed copy of one of our files
    is read (its content still verified): evaluating only reads. A Parquet file of the user's own has no digest to
    check and is read as it is."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise UserError(
            f"generations {uri!r} do not exist; pass the output of `mpo-ray generate` (a Parquet file or directory)"
        )
    is_dir = fs.isdir(path)
    _check_made_by(uri, is_dir)
    files = storage.list_files(uri) if is_dir else [uri]
    files = [f for f in files if f.endswith(".parquet")]
    if not files:
        raise UserError(f"generations {uri!r} hold no Parquet files")
    tables, seen = [], {}
    for f in files:
        table = _read_verified(f)
        if "prompt_id" in table.column_names:
            for pid in table.column("prompt_id").to_pylist():
                if pid in seen:
                    where = f"both {seen[pid]} and {f}" if seen[pid] != f else f"{f} twice"
                    raise UserError(
                        f"generations {uri!r}: prompt id {pid!r} is in {where}; each prompt must be there "
                        "once (move the copy or the other run's file out)."
                    )
                seen[pid] = f
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="default")
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise UserError(f"generations {uri!r} lack column(s) {missing}; they have {table.column_names}")
    if "error" in table.column_names:
        table = table.filter(pc.is_null(table["error"]))
    return table


def _check_made_by(uri: str, is_dir: bool) -> None:
    """UserError when the nearest owner marker above ``uri`` (its own, or up to two directories up: a reweight
    run's scores/, a store's score cache) is not a generating workflow's, or ``uri`` is a whole sweep."""
    here = uri if "://" in uri else os.path.abspath(uri)
    start = here = here.rstrip("/") if is_dir else _parent(here)
    for _ in range(3):
        if here is None:
            return
        marker = storage.join(here, OWNER_FILE)
        if storage.exists(marker):
            try:
                owner = storage.read_json(marker)
                kind = owner.get("kind") if owner.get("format") == OWNER_FORMAT else None
            except (OSError, ValueError, AttributeError):
                kind = None
            if kind == "sweep" and is_dir and here == start:
                raise UserError(
                    f"generations {uri!r} are a whole sweep, one file per weight vector; pass the points' "
                    f"files, such as {storage.join(uri, 'MPO.parquet')!r}."
                )
            if kind in GENERATION_KINDS:
                return
            what = f"the output of `mpo-ray {kind}`" if kind else f"marked by an unreadable {marker!r}"
            raise UserError(
                f"generations {uri!r} are not generations: {here!r} is {what}; pass the output of "
                "`mpo-ray generate` or a point's file of `mpo-ray sweep`."
            )
        here = _parent(here)


def _parent(uri: str) -> str | None:
    """The directory above ``uri``; None above a bucket or below the filesystem's root."""
    protocol, _, path = uri.rpartition("://")
    path = path.rstrip("/")
    if "/" not in path.strip("/"):
        return None
    parent = path.rsplit("/", 1)[0]
    return f"{protocol}://{parent}" if protocol else parent


def _read_verified(uri: str) -> pa.Table:
    """A file mpo-ray wrote, verified against its content digest (UserError if changed); any other as it is."""
    meta = storage.parquet_metadata(uri)
    if meta is None:
        raise UserError(f"generations file {uri!r} is not readable Parquet; pass Parquet files only.")
    if storage.DIGEST_KEY not in meta:
        return storage.read_parquet(uri)  # not mpo-ray's: nothing to verify it against
    try:  # a renamed copy is read too, its values verified: the name check is for writers
        return storage.read_parquet(uri, verify=True, same_name=False)
    except storage.CorruptFile as exc:
        raise UserError(
            f"generations: {exc} Generate it again; if you changed it on purpose, write it without "
            "mpo-ray's metadata (table.replace_schema_metadata(None))."
        ) from None


def check_results_output(uri: str) -> None:
    """Before any scoring: UserError when ``uri`` is a directory, a link, or a file that is not an earlier
    evaluation's (recognised by its first bytes: `write_results` puts ``format`` first)."""
    fs, path = storage.filesystem(uri)
    if storage.is_link(uri):
        raise UserError(
            f"--output {uri!r} is a symbolic link; give the path of a new file (mpo-ray never writes through one)."
        )
    if not fs.exists(path):
        return
    if fs.isdir(path):
        raise UserError(
            f"--output {uri!r} is a directory; give a file name, such as {storage.join(uri, 'results.json')!r}."
        )
    with fs.open(path, "rb") as f:
        head = f.read(256).decode("utf-8", "replace")
    if not _OURS.match(head):
        raise UserError(
            f"--output {uri!r} exists and is not an evaluation mpo-ray wrote; give a new file name "
            "(mpo-ray does not overwrite files it did not write)."
        )


def write_results(uri: str, results: list[dict]) -> None:
    """The evaluations as JSON, ``format`` first, so that a later run knows the file as its own from its first bytes."""
    storage.write_json(uri, {"format": EVALUATION_FORMAT, "library_version": __version__, "results": results})


def objectives_from_config(config) -> dict[str, Callable]:
    """objective name → score function, from the config's `rewards:` (functions or reward models)."""
    from mpo_ray.models.rewards import RewardSource

    if not config.rewards:
        raise UserError(
            f"{config.source}: no `rewards:` to evaluate with; add reward functions or models to the config"
        )
    return {spec.objective or spec.name: RewardSource(spec).score for spec in config.rewards}


def score_generations(table: pa.Table, objectives: Mapping[str, Callable]) -> dict[str, np.ndarray]:
    prompts, responses = table["prompt"].to_pylist(), table["response"].to_pylist()
    out = {}
    for name, fn in objectives.items():
        values = np.asarray(fn(prompts, responses), dtype=np.float64)
        if values.shape != (len(prompts),):
            raise UserError(f"objective {name!r} returned shape {values.shape}; it must return one number per response")
        out[name] = values
    return out


def evaluate_generations(
    generations,
    objectives: Mapping[str, Callable],
    *,
    reference=None,
    name: str | None = None,
    models: tuple[str, list[str]] | None = None,
    seed: int = 0,
) -> dict:
    """Per-objective mean ± 95% CI; with `reference` generations (same prompt ids), win rates
    and the MaxMin view `min_win_rate` (the worst objective's win rate). With ``models`` = (π_ref's name,
    the policies' names) and generations that carry ``sample_logprob`` (or, resampled, ``target_logprob``) and
    those models' ``logp_<name>`` columns (`sweep` writes them), also MPO's own objective
    (`implicit`, `core.yardstick`).

    `generations` and `reference` are URIs or tables with prompt_id, prompt, response.
    """
    if not objectives:
        raise UserError("evaluate_generations: no objectives given")
    table = read_generations(generations) if isinstance(generations, str) else generations
    if table.num_rows == 0:
        raise UserError(f"generations {name or generations!r} have no rows without errors")
    scores = score_generations(table, objectives)
    result = {"name": name, "rows": table.num_rows, "objectives": {}}
    for obj, values in scores.items():
        m, lo, hi = mean_ci(values)
        result["objectives"][obj] = {"mean": m, "ci95": [lo, hi]}
    if reference is not None:
        ref = read_generations(reference) if isinstance(reference, str) else reference
        ref_pos = {pid: i for i, pid in enumerate(ref["prompt_id"].to_pylist())}
        ids = table["prompt_id"].to_pylist()
        both = [i for i, pid in enumerate(ids) if pid in ref_pos]
        if not both:
            raise UserError("the generations and the reference share no prompt_id; generate both from the same corpus")
        ref_scores = score_generations(ref.take([ref_pos[ids[i]] for i in both]), objectives)
        wins = {obj: win_rates(values[both], ref_scores[obj]) for obj, values in scores.items()}
        for obj, outcome in wins.items():
            m, lo, hi = wilson(outcome)
            result["objectives"][obj].update(win_rate=m, win_rate_ci95=[lo, hi])
        result["paired_with_reference"] = len(both)
        rates = {obj: v["win_rate"] for obj, v in result["objectives"].items()}
        result["worst_objective"] = min(rates, key=rates.get)
        table_of_wins = np.stack(list(wins.values()), axis=1)
        result["min_win_rate"], lo, hi = paired_bootstrap(min_mean, table_of_wins)
        result["min_win_rate_ci95"] = [lo, hi]
        result["wins"] = {"prompt_ids": [ids[i] for i in both], **{obj: w.tolist() for obj, w in wins.items()}}
    if models is not None and has_logprobs(table, *models):
        ref_name, names = models
        result["implicit"] = implicit_objective(
            table["prompt_id"].to_pylist(),
            _column(table, "sample_logprob"),
            _column(table, f"logp_{ref_name}"),
            np.stack([_column(table, f"logp_{n}") for n in names], axis=1),
            names,
            seed=seed,
            target_logprob=_column(table, "target_logprob"),
        )
    return result


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A float column as numpy, nulls as NaN; a column the file predates (``target_logprob``) as all NaN."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64)


def has_logprobs(table: pa.Table, reference: str, policies: list[str]) -> bool:
    """Whether a generation table can measure MPO's own objective: every model's log-prob of every row, and every
    row's sampling log-prob (``sample_logprob``) or, for a resampled set, its target's (``target_logprob``; a
    column missing from an older file counts as null)."""
    full = lambda c: c in table.column_names and table[c].null_count == 0  # noqa: E731
    return (full("sample_logprob") or full("target_logprob")) and all(
        full(c) for c in (f"logp_{reference}", *(f"logp_{n}" for n in policies))
    )


def compare_min_win_rates(a: dict, b: dict, *, seed: int = 0) -> dict:
    """a − b on the min win rate, paired over the prompts both were evaluated on (`paired_difference`)."""
    objectives = [o for o in a["wins"] if o != "prompt_ids"]
    side = lambda r: (r["wins"]["prompt_ids"], np.array([r["wins"][o] for o in objectives]).T)  # noqa: E731
    return {"minus": b["name"], **paired_difference(min_mean, side(a), side(b), seed=seed)}


def format_evaluations(results: list[dict]) -> str:
    """A Markdown table: one row per evaluated generation set."""
    objs = list(results[0]["objectives"])
    has_wins = "min_win_rate" in results[0]
    has_implicit = all("implicit" in r for r in results)
    head = ["generations"] + [f"{o} (mean ± 95% CI)" for o in objs]
    if has_wins:
        head += [f"{o} win rate" for o in objs] + ["min win rate (95% CI)"]
    if has_implicit:
        head += ["MPO objective J, nats (95% CI)", "J bias-corrected (95% CI)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [str(r["name"])]
        for o in objs:
            v = r["objectives"][o]
            cells.append(f"{v['mean']:.2f} ± {(v['ci95'][1] - v['ci95'][0]) / 2:.2f}")
        if has_wins:
            lo, hi = r["min_win_rate_ci95"]
            cells += [f"{r['objectives'][o]['win_rate']:.2f}" for o in objs] + [
                f"**{r['min_win_rate']:.2f}** [{lo:.2f}, {hi:.2f}]"
            ]
        if has_implicit:
            j = r["implicit"]
            cells.append(
                f"{j['implicit_min']:.1f} [{j['implicit_min_ci95'][0]:.1f}, {j['implicit_min_ci95'][1]:.1f}]"
                + ("" if j.get("kl_estimate", "exact") == "exact" else " †")
            )
            bc = j.get("implicit_min_corrected")
            cells.append(
                ""
                if bc is None
                else f"{bc:.1f} [{j['implicit_min_corrected_ci95'][0]:.1f}, {j['implicit_min_corrected_ci95'][1]:.1f}]"
            )
        lines.append("| " + " | ".join(cells) + " |")
    if has_implicit and any(r["implicit"].get("kl_estimate", "exact") != "exact" for r in results):
        lines += [
            "",
            "† resampled set: its KL term is π_λ's log-prob at the served samples with Z estimated from the "
            "candidates (`core.yardstick`), not the served distribution's own.",
        ]
    return "\n".join(lines)
