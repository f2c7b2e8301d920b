"""Generate's staging protocol (no Ray): staged files promoted whole, truncated ones dropped, no duplicates."""

import os

import pyarrow as pa
import pyarrow.parquet as pq

from mpo_ray.io.ownership import META_DIR
from mpo_ray.io.schemas import GENERATION_SCHEMA
from mpo_ray.io.staging import file_stats, promote


def _rows(ids) -> pa.Table:
    return pa.table(
        {
            "prompt_id": ids,
            "prompt": ids,
            "response": ids,
            "finish_reason": ["stop"] * len(ids),
            "num_tokens": [1] * len(ids),
            "log_normalizer": [0.0] * len(ids),
            "sample_logprob": [None] * len(ids),
            "log_partition": [None] * len(ids),
            "target_logprob": [None] * len(ids),
            "weights_version": ["v"] * len(ids),
            "seed": [1] * len(ids),
            "error": [None] * len(ids),
        },
        schema=GENERATION_SCHEMA,
    )


def test_promote_keeps_complete_files_drops_truncated_and_duplicates(tmp_path):
    out = tmp_path / "out"
    staging = out / META_DIR / "staging" / "a1"
    staging.mkdir(parents=True)
    pq.write_table(_rows(["a", "b"]), out / "done.parquet")
    pq.write_table(_rows(["c", "d"]), staging / "new.parquet")
    pq.write_table(_rows(["b", "e", "e"]), staging / "overlap.parquet")
    pq.write_table(_rows(["a"]), staging / "dup.parquet")
    full = (staging / "new.parquet").read_bytes()
    (staging / "cut.parquet").write_bytes(full[: len(full) // 2])  # a writer stopped mid-file
    promoted = promote(str(out), {"a", "b"})
    assert sorted(os.path.basename(p) for p in promoted) == ["new.parquet", "overlap.parquet"]
    assert sorted(pq.read_table(out).column("prompt_id").to_pylist()) == ["a", "b", "c", "d", "e"]
    assert not (out / META_DIR / "staging").exists()
    assert file_stats(promoted) == {"rows": 3, "errors": 0, "generated_tokens": 3}  # c, d and one e
    assert file_stats([]) == {"rows": 0, "errors": 0, "generated_tokens": 0}
