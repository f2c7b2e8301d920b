"""Explicit pyarrow schemas of every table, and the weights artifact's shape.

Tables are written with these schemas rather than inferred ones: inference
differs per batch (an all-null column, an empty list) and breaks later writes
and reads. Column names are the data contracts of docs/design.md §4.
"""

from __future__ import annotations

import pyarrow as pa


def score_table_schema(policy_names: list[str], reward_names: list[str] = ()) -> pa.Schema:
    """One row per (prompt, sample): the sample, its reference and proposal log-probs, every policy's and reward's score."""
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
        # log-prob of the response under the distribution that drew it (null after best-of-n resampling,
        # whose distribution has no closed form); with `logp_<model>` columns it measures MPO's own objective
        pa.field("sample_logprob", pa.float64(), nullable=True),
        pa.field("weights_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ]
)


def generation_table(ids: list[str], prompts: list[str], generations: list, seeds: list[int], version: str,
                     errors: list[str | None] | None = None, *, resampled: bool = False,
                     logprobs: dict[str, list] | None = None) -> pa.Table:
    """Generation rows, one per prompt; a ``None`` generation is an error row (its reason in ``errors``).

    ``generations`` hold ``text``, ``finish_reason``, ``num_tokens``, ``log_normalizer`` and
    ``proposal_logprob`` (the decoder's `Generation`); ``resampled`` says they were picked from several
    candidates. ``logprobs`` (model name → each row's log π(y|x), None on error rows) adds the
    ``logp_<name>`` columns. One builder serves `generate` and `sweep` alike.
    """
    g = list(generations)
    table = pa.table({
        "prompt_id": ids, "prompt": prompts, "response": [x.text if x else "" for x in g],
        "finish_reason": [x.finish_reason if x else None for x in g],
        "num_tokens": [x.num_tokens if x else 0 for x in g],
        "log_normalizer": [x.log_normalizer if x else None for x in g],
        "sample_logprob": [x.proposal_logprob if x and not resampled else None for x in g],
        "weights_version": [version] * len(ids), "seed": seeds,
        "error": list(errors) if errors is not None else [None] * len(ids),
    }, schema=GENERATION_SCHEMA)
    for name, values in (logprobs or {}).items():
        table = table.append_column(pa.field(f"logp_{name}", pa.float64(), nullable=True), pa.array(values, pa.float64()))
    return table
