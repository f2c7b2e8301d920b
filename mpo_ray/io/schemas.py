"""Explicit pyarrow schemas of every table, and the weights artifact's shape.

Tables are written with these schemas rather than inferred ones: inference
differs per batch (an all-null column, an empty list) and breaks later writes
and reads. Column names are the data contracts of DESIGN.md §4.
"""

from __future__ import annotations

import pyarrow as pa

WEIGHTS_FORMAT = "mpo-ray/weights"
WEIGHTS_FORMAT_VERSION = 1


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
        pa.field("weights_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ]
)

# Keys every weights artifact has; readers check them to fail clearly on foreign JSON.
WEIGHTS_REQUIRED_KEYS = ("format", "format_version", "version", "policies", "weights", "beta", "objective")


def check_weights_artifact(obj, source: str) -> dict:
    """Validate a loaded weights artifact; ValueError naming the source and what is wrong."""
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{source} is not an mpo-ray weights artifact (no \"format\": {WEIGHTS_FORMAT!r}).")
    missing = [k for k in WEIGHTS_REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{source} lacks {missing}; regenerate it with `mpo-ray reweight`.")
    if obj["format_version"] > WEIGHTS_FORMAT_VERSION:
        raise ValueError(f"{source} has format_version {obj['format_version']}; this mpo-ray reads up to {WEIGHTS_FORMAT_VERSION}. Upgrade mpo-ray.")
    if len(obj["policies"]) != len(obj["weights"]):
        raise ValueError(f"{source} names {len(obj['policies'])} policies but has {len(obj['weights'])} weights.")
    return obj
