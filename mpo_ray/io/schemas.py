"""Explicit pyarrow schemas of every table, and the weights artifact's shape.

Tables are written with these schemas rather than inferred ones: inference
differs per batch (an all-null column, an empty list) and breaks later writes
and reads. Column names are the data contracts of docs/design.md §4.
"""

from __future__ import annotations

import pyarrow as pa


def score_table_schema(policy_names: list[str], reward_names: list[str] = ()) -> pa.Schema:
    """One row per (prompt, sample): the sample, its reference and proposal log-probs, every policy's and
    reward's score."""
    fields = [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),  # which model drew the sample ("ref" or a policy)
        pa.field("logp_ref", pa.float64(), nullable=False),
        pa.field("logp_proposal", pa.float64(), nullable=False),
    ]
    fields += [pa.field(f"logp_{name}", pa.float64(), nullable=False) for name in policy_names]
    fields += [pa.field(f"reward_{name}", pa.float64(), nullable=False) for name in reward_names]
    return pa.schema(fields)


GENERATION_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=True),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("log_normalizer", pa.float64(), nullable=True),
        # log-prob of the response under the distribution that drew it (null after resampling among n > 1 candidates,
        # whose distribution has no closed form); with `logp_<model>` columns it measures MPO's own objective
        pa.field("sample_logprob", pa.float64(), nullable=True),
        # resampled rows only (num_candidates = n > 1): log Ẑ(x), the log of the mean importance weight π̃_λ/q over the
        # prompt's n candidates (Ẑ unbiased for Z(x) = Σ_y Π_k π_k(y|x)^λ_k, its log biased low), and
        # target_logprob = logprob + log_normalizer − log Ẑ(x) ≈ log π_λ(y|x), the sequence-level target's log-prob at
        # the served y: what MPO's yardstick uses for the KL term where sample_logprob is null (core/yardstick.py)
        pa.field("log_partition", pa.float64(), nullable=True),
        pa.field("target_logprob", pa.float64(), nullable=True),
        pa.field("weights_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ]
)


def generation_table(
    ids: list[str],
    prompts: list[str],
    generations: list,
    seeds: list[int],
    version: str,
    errors: list[str | None] | None = None,
    *,
    resampled: bool = False,
    logprobs: dict[str, list] | None = None,
) -> pa.Table:
    """Generation rows, one per prompt; a ``None`` generation is an error row (its reason in ``errors``).

    ``generations`` hold ``text``, ``finish_reason``, ``num_tokens``, ``log_normalizer`` and
    ``proposal_logprob`` (the decoder's `Generation`, and ``log_partition`` when resampled); ``resampled`` says they
    were picked from several candidates: their ``sample_logprob`` is null (the distribution actually served has no
    closed form) and ``log_partition``/``target_logprob`` are filled instead. ``logprobs`` (model name → each row's
    log π(y|x), None on error rows) adds the
    ``logp_<name>`` columns. One builder serves `generate` and `sweep` alike.
    """
    g = list(generations)
    table = pa.table(
        {
            "prompt_id": ids,
            "prompt": prompts,
            "response": [x.text if x else "" for x in g],
            "finish_reason": [x.finish_reason if x else None for x in g],
            "num_tokens": [x.num_tokens if x else 0 for x in g],
            "log_normalizer": [x.log_normalizer if x else None for x in g],
            "sample_logprob": [x.proposal_logprob if x and not resampled else None for x in g],
            "log_partition": [x.log_partition if x and resampled else None for x in g],
            "target_logprob": [
                x.logprob + x.log_normalizer - x.log_partition
                if x and resampled and x.log_partition is not None
                else None
                for x in g
            ],
            "weights_version": [version] * len(ids),
            "seed": seeds,
            "error": list(errors) if errors is not None else [None] * len(ids),
        },
        schema=GENERATION_SCHEMA,
    )
    for name, values in (logprobs or {}).items():
        table = table.append_column(
            pa.field(f"logp_{name}", pa.float64(), nullable=True), pa.array(values, pa.float64())
        )
    return table


def with_generation_columns(table: pa.Table) -> pa.Table:
    """``table`` with every GENERATION_SCHEMA column it lacks added as nulls (files written before that column
    existed: ``log_partition`` and ``target_logprob`` are newer), any extra columns (``logp_<name>``) kept."""
    present = set(table.column_names)
    for i, f in enumerate(GENERATION_SCHEMA):
        if f.name not in present:
            table = table.add_column(min(i, table.num_columns), f, pa.nulls(table.num_rows, f.type))
    return table
