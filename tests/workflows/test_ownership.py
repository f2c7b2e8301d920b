"""Issue 21's catalogue, ownership and resume keys: inside its own outputs mpo-ray removes or replaces only
the files it wrote, never through a link, and never resumes from rows that were computed from other inputs.

Each test is one case a hostile user tried, named by what it proves. Only the last starts Ray.
"""

import errno
import json
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import TINY_CONFIG, generation_rows

from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.ownership import META_DIR, check_ours, mark_ours, owns_file, remove_ours
from mpo_ray.io.provenance import tree_digest
from mpo_ray.io.staging import drop_stale, promote, write_rows, written_rows
from mpo_ray.workflows.pipeline import Batch, _batch_rows

FP = "fingerprint-of-this-output"


def rows(ids, texts=None) -> pa.Table:
    return generation_rows(ids, prompts=texts or ids, responses=ids, seeds=[1] * len(ids))


def users_parquet(path, ids=("u1",)):
    pq.write_table(rows(list(ids)), path)  # plain pyarrow: what a user's own script writes
    return path.read_bytes()


# --- Ownership at file level -------------------------------------------------


def test_a_users_parquet_in_a_generate_output_is_left_alone_and_not_counted(tmp_path):
    out = tmp_path / "gen"
    mark_ours(str(out), "generate")
    write_rows(str(out / "part-1.parquet"), rows(["a", "b"]), FP)
    before = users_parquet(out / "my-analysis.parquet", ids=("a", "z"))
    held = written_rows(str(out), FP)
    assert sorted(held) == ["a", "b"]  # the user's rows are not taken for generated ones
    assert (out / "my-analysis.parquet").read_bytes() == before


def test_a_copy_of_our_file_under_another_name_is_not_ours(tmp_path):
    out = tmp_path / "gen"
    write_rows(str(out / "part-1.parquet"), rows(["a"]), FP)
    shutil.copy(out / "part-1.parquet", out / "part-1 (copy).parquet")
    assert owns_file(str(out / "part-1.parquet")) and not owns_file(str(out / "part-1 (copy).parquet"))
    with pytest.raises(storage.CorruptFile, match="is a copy of 'part-1.parquet'"):
        storage.read_parquet(str(out / "part-1 (copy).parquet"), verify=True)
    assert sorted(written_rows(str(out), FP)) == ["a"]  # its rows are not counted twice
    assert (out / "part-1 (copy).parquet").exists()


def test_a_file_of_another_output_copied_in_under_its_own_name_is_not_counted(tmp_path):
    other, out = tmp_path / "other", tmp_path / "gen"
    write_rows(str(other / "part-9.parquet"), rows(["x"]), "another-fingerprint")
    out.mkdir()
    shutil.copy(other / "part-9.parquet", out / "part-9.parquet")
    assert written_rows(str(out), FP) == {} and (out / "part-9.parquet").exists()


def test_our_file_changed_on_disk_is_removed_and_regenerated_but_a_users_never(tmp_path):
    out = tmp_path / "gen"
    write_rows(str(out / "part-1.parquet"), rows(["a"]), FP)
    table = pq.read_table(out / "part-1.parquet")  # an edit that keeps our footer: values change, digest does not
    edited = table.set_column(2, "response", pa.array(["edited"]))
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), out / "part-1.parquet")
    users_parquet(out / "theirs.parquet")
    assert written_rows(str(out), FP) == {}
    assert not (out / "part-1.parquet").exists() and (out / "theirs.parquet").exists()


def test_remove_ours_never_deletes_a_users_file_or_through_a_link(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    write_rows(str(elsewhere / "part-1.parquet"), rows(["a"]), FP)  # ours, but outside the output
    out.mkdir()
    (out / "scores").symlink_to(elsewhere, target_is_directory=True)
    assert not remove_ours(str(out / "scores" / "part-1.parquet"), str(out), why="test")
    assert (elsewhere / "part-1.parquet").exists()
    users_parquet(out / "notes.parquet")
    assert not remove_ours(str(out / "notes.parquet"), str(out), why="test") and (out / "notes.parquet").exists()
    write_rows(str(out / "ours.parquet"), rows(["b"]), FP)
    assert remove_ours(str(out / "ours.parquet"), str(out), why="test") and not (out / "ours.parquet").exists()


def test_a_symlinked_scores_directory_is_refused_before_any_work(tmp_path):
    out, elsewhere = tmp_path / "rw", tmp_path / "elsewhere"
    mark_ours(str(out), "reweight")
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("the user's")
    (out / "scores").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="'scores' in it is a symbolic link"):
        check_ours(str(out), "reweight", subdirs=("scores",))
    assert (elsewhere / "keep.txt").read_text() == "the user's"


def test_reweight_leaves_a_users_file_in_scores_alone(tmp_path):
    """The stale-file sweep of a reweight rerun: the run's own earlier files go, the user's stays."""
    from mpo_ray.config import load_config
    from mpo_ray.workflows.pipeline import plan_batches, score_fingerprint

    config = load_config(TINY_CONFIG)
    out = tmp_path / "rw"
    scores = out / "scores"
    mark_ours(str(out), "reweight")
    write_rows(str(scores / "part-00000-old.parquet"), rows(["a"]), FP)  # an earlier run's batch
    users_parquet(scores / "mine.parquet")
    fp = score_fingerprint(config, config.reweight.sampling, config.reweight.seed)
    batches = plan_batches(str(scores), ["p"], ["text"], 4, fp, stored=set(storage.list_files(str(scores))))
    for uri in sorted(set(storage.list_files(str(scores))) - {b.uri for b in batches}):
        remove_ours(uri, str(out), why="stale")
    assert sorted(os.listdir(scores)) == ["mine.parquet"]


def test_promotion_never_replaces_a_users_file_of_the_same_name(tmp_path):
    out = tmp_path / "gen"
    staged = out / META_DIR / "staging" / "a1"
    staged.mkdir(parents=True)
    pq.write_table(rows(["a"]), staged / "block-0.parquet")
    before = users_parquet(out / "block-0.parquet", ids=("mine",))
    promoted = promote(str(out), set(), FP)
    assert (out / "block-0.parquet").read_bytes() == before
    assert len(promoted) == 1 and promoted[0] != str(out / "block-0.parquet") and owns_file(promoted[0])
    assert not (out / META_DIR / "staging").exists()


def test_promotion_leaves_a_file_it_did_not_stage(tmp_path):
    out = tmp_path / "gen"
    staged = out / META_DIR / "staging" / "a1"
    staged.mkdir(parents=True)
    (staged / "notes.txt").write_text("mine")
    promote(str(out), set(), FP)
    assert (staged / "notes.txt").read_text() == "mine"


# --- Resume keys -------------------------------------------------------------


def test_a_prompt_edited_since_generation_is_generated_again_not_served_stale(tmp_path):
    out = tmp_path / "gen"
    write_rows(str(out / "part-1.parquet"), rows(["a", "b"], ["old a", "old b"]), FP)
    held = written_rows(str(out), FP)
    done = drop_stale(str(out), held, {"a": "old a", "b": "new b"}, FP)
    assert done == {"a"}
    assert pq.read_table(out / "part-1.parquet").column("prompt_id").to_pylist() == ["a"]
    assert owns_file(str(out / "part-1.parquet"))
    assert pq.read_metadata(out / "part-1.parquet").metadata[storage.FINGERPRINT_KEY] == FP.encode()


def test_a_score_batch_copied_over_another_batchs_name_is_not_reused(tmp_path):
    scores = tmp_path / "scores"
    table = pa.table({"prompt_id": ["a"], "prompt": ["text a"], "x": [1.0]})
    storage.write_parquet(str(scores / "part-00000-aaa.parquet"), table)
    shutil.copy(scores / "part-00000-aaa.parquet", scores / "part-00001-bbb.parquet")
    ok = Batch(str(scores / "part-00000-aaa.parquet"), ["a"], ["text a"], stored=True)
    copied = Batch(str(scores / "part-00001-bbb.parquet"), ["b"], ["text b"], stored=True)
    assert _batch_rows(ok).num_rows == 1
    with pytest.raises(storage.CorruptFile):
        _batch_rows(copied)


def test_a_score_batch_holding_other_prompts_is_not_reused(tmp_path):
    uri = str(tmp_path / "part-00000-aaa.parquet")
    storage.write_parquet(uri, pa.table({"prompt_id": ["a"], "prompt": ["text a"]}))  # written under this very name
    with pytest.raises(storage.CorruptFile, match="holds the rows of other prompts"):
        _batch_rows(Batch(uri, ["a"], ["text a, edited"], stored=True))


def test_a_model_edited_in_place_with_its_mtime_restored_gets_a_new_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("MPO_RAY_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "adapter"
    model.mkdir()
    weights = model / "adapter_model.safetensors"
    weights.write_bytes(b"\0" * 64)
    before = tree_digest(str(model))
    st = os.stat(weights)
    time.sleep(0.01)
    weights.write_bytes(b"\1" * 64)  # same size, retrained in place ...
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and its mtime put back (cp -p, rsync -t, touch -d)
    assert os.stat(weights).st_mtime_ns == st.st_mtime_ns
    assert tree_digest(str(model)) != before


# --- Disk full ----------------------------------------------------------------


def test_disk_full_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    real_open = local.LocalFileSystem._open

    def full_disk(self, path, mode="rb", **kw):
        f = real_open(self, path, mode, **kw)
        if "w" in mode:

            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    monkeypatch.setattr(local.LocalFileSystem, "_open", full_disk)
    with pytest.raises(UserError, match="No space left on device") as err:
        storage.write_json(str(tmp_path / "out" / "weights.json"), {"a": 1})
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path / "out") == []


# --- End to end on Ray --------------------------------------------------------


def test_generate_rerun_keeps_a_users_file_and_regenerates_an_edited_prompt(local_ray, tmp_path):
    from mpo_ray.config import load_config
    from mpo_ray.workflows.generate import generate

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"prompt_id": f"p{i}", "prompt": f"Tell me about {i}."}) + "\n" for i in range(6))
    )
    out = tmp_path / "gen"
    config = load_config(
        TINY_CONFIG,
        overrides={
            "generate.prompts": str(corpus),
            "generate.output": str(out),
            "generate.weights": [0.5, 0.3, 0.2],
            "generate.max_new_tokens": 4,
            "generate.batch_size": 4,
            "generate.rows_per_file": 4,
        },
    )
    generate(config, progress=False)
    mine = users_parquet(out / "my-notes.parquet", ids=("p0",))
    corpus.write_text(corpus.read_text().replace("Tell me about 3.", "Tell me about three."))
    summary = generate(config, progress=False)
    assert (out / "my-notes.parquet").read_bytes() == mine
    assert summary["rows"] == 1 and summary["skipped"] == 5
    ours = [str(out / f) for f in os.listdir(out) if f.endswith(".parquet") and owns_file(str(out / f))]
    table = storage.read_parquet_files(ours)
    ids = table.column("prompt_id").to_pylist()
    assert sorted(ids) == [f"p{i}" for i in range(6)]
    assert dict(zip(ids, table.column("prompt").to_pylist()))["p3"] == "Tell me about three."
    manifest = json.loads((out / META_DIR / "manifest.json").read_text())  # the served distribution is named
    assert manifest["serving"]["mode"] == "token-level" and summary["serving"]["num_candidates"] == 1


def test_a_generate_rerun_after_an_adapter_was_retrained_in_place_is_refused(tmp_path, monkeypatch):
    """Rows made by the old adapter never sit beside the new one's under one weights_version."""
    from mpo_ray.config import load_config
    from mpo_ray.workflows.generate import check_output

    monkeypatch.setenv("MPO_RAY_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x01" * 64)
    config = load_config(
        TINY_CONFIG,
        overrides={
            "generate.output": str(tmp_path / "gen"),
            "generate.weights": [0.5, 0.3, 0.2],
            "policies": [
                {"name": "concise", "model": "tiny:base", "adapter": str(adapter)},
                {"name": "detailed", "model": "tiny:base", "adapter": "tiny:lora-2"},
                {"name": "upbeat", "model": "tiny:base", "adapter": "tiny:lora-3"},
            ],
        },
    )
    fingerprint, settings = check_output(config, [0.5, 0.3, 0.2], "v")
    mark_ours(str(tmp_path / "gen"), "generate")
    storage.write_json(
        str(tmp_path / "gen" / META_DIR / "manifest.json"), {"fingerprint": fingerprint, "settings": settings}
    )
    assert check_output(config, [0.5, 0.3, 0.2], "v")[0] == fingerprint  # nothing changed: resumed
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02" * 64)  # retrained in place, same size
    with pytest.raises(UserError, match=r"holds generations made with other settings \(changed: \['models'\]\)"):
        check_output(config, [0.5, 0.3, 0.2], "v")
