"""Prompt corpora and atomic storage on fsspec URLs."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpo_ray.core.seeds import derive_seed, prompt_id
from mpo_ray.io import storage
from mpo_ray.io.corpus import read_prompts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_formats_give_the_same_prompts(tmp_path):
    rows = [{"prompt": f"question {i}"} for i in range(5)]
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text("prompt\n" + "\n".join(r["prompt"] for r in rows) + "\n")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "array.json").write_text(json.dumps(rows))  # one JSON array of objects, as feedback allows too
    uris = [
        jsonl,
        str(tmp_path / "p.parquet"),
        str(tmp_path / "p.csv"),
        str(tmp_path / "ds"),
        str(tmp_path / "array.json"),
    ]
    results = [read_prompts(u) for u in uris]
    assert all(r == results[0] for r in results)
    ids, prompts = results[0]
    assert prompts == [r["prompt"] for r in rows] and ids == [prompt_id(p) for p in prompts]


def test_memory_filesystem_and_id_column():
    storage.write_text("memory://corpus/p.jsonl", '{"id": 7, "text": "hi"}\n{"id": 8, "text": "there"}\n')
    ids, prompts = read_prompts("memory://corpus/p.jsonl", prompt_column="text", id_column="id", limit=1)
    assert ids == ["7"] and prompts == ["hi"]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"question": "a"}\n', r"no column 'prompt'; its columns are \['question'\]"),
        ("", "is empty"),
        ('{"prompt": 3}\n', "must hold non-empty strings; row 0 is 3"),
        ('{"prompt": "a"}\n{"prompt": "a"}\n', "appears at rows 0 and 1"),
        ("not json\n", "line 1 is not JSON"),
    ],
)
def test_bad_corpora(tmp_path, content, match):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_prompts(str(path))


def test_unreadable_urls(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="cannot open"):
        read_prompts("nosuchproto://x/y.jsonl")
    (tmp_path / "x.txt").write_text("prompt\n")
    with pytest.raises(ValueError, match="unknown file type"):
        read_prompts(str(tmp_path / "x.txt"))


def test_seeds_depend_on_key_not_order():
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert len({derive_seed(0, "a", 1), derive_seed(0, "a", 2), derive_seed(1, "a", 1), derive_seed(0, "b", 1)}) == 4
    assert 0 <= derive_seed(5, "x") < 2**63


def test_atomic_writes_leave_no_temporaries(tmp_path):
    storage.write_json(str(tmp_path / "d" / "w.json"), {"a": 1})
    storage.write_parquet(str(tmp_path / "d" / "t.parquet"), pa.table({"x": [1, 2]}))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["t.parquet", "w.json"]
    assert storage.read_json(str(tmp_path / "d" / "w.json")) == {"a": 1}
    assert storage.list_files(str(tmp_path / "d")) == [str(tmp_path / "d" / "t.parquet")]
    (tmp_path / "d" / "_tmp-half.parquet").write_bytes(b"partial")
    assert len(storage.list_files(str(tmp_path / "d"))) == 1


def test_check_writable(tmp_path):
    storage.check_writable(str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()  # the probe leaves nothing behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        storage.check_writable(str(blocker / "sub"))
