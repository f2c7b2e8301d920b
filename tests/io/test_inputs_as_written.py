"""Issue 21, input typing: ids and texts as written, one BOM policy, duplicate JSON keys refused.

Each case reads its file through every reader that takes it (reweight / nightly `read_prompts`, generate's
`check_unique_ids`, nightly `read_feedback`); one test runs Ray Data's reader (`runtime.data.read_corpus`)
to check that generate's workers see the rows the driver checked.
"""

import codecs
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpo_ray.core.errors import UserError
from mpo_ray.core.seeds import derive_seed, prompt_id, row_id
from mpo_ray.io.corpus import check_unique_ids, read_prompts
from mpo_ray.io.feedback import read_feedback

BOM = codecs.BOM_UTF8.decode("utf-8")
POLICIES = ["helpful", "harmless"]


def write(path, text: str) -> str:
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def refused(match: str, fn, *args, **kwargs) -> str:
    """The one-line UserError ``fn`` raises (before anything else runs)."""
    with pytest.raises(UserError, match=match) as exc:
        fn(*args, **kwargs)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_case1_csv_ids_are_the_text_written(tmp_path):
    corpus = write(tmp_path / "c.csv", "prompt_id,prompt\n007,a\n008,b\n1.10,c\n")
    ids, prompts = read_prompts(corpus)  # reweight and nightly
    assert ids == ["007", "008", "1.10"] and prompts == ["a", "b", "c"]
    assert check_unique_ids(corpus, "prompt", "prompt_id") == {"007": "a", "008": "b", "1.10": "c"}  # generate


def test_case2_csv_cells_are_text(tmp_path):
    corpus = write(tmp_path / "c.csv", "prompt\n42\nNA\n1e3\n")
    assert read_prompts(corpus)[1] == ["42", "NA", "1e3"]
    assert list(check_unique_ids(corpus, "prompt", "prompt_id").values()) == ["42", "NA", "1e3"]
    feedback = write(tmp_path / "f.csv", "prompt,chosen,rejected,group\n1.0,42,007,helpful\n")
    fb = read_feedback(feedback, POLICIES)
    assert (fb.prompts, fb.chosen, fb.rejected) == (["1.0"], ["42"], ["007"])


def test_case3_duplicate_json_keys_are_refused(tmp_path):
    corpus = write(tmp_path / "c.jsonl", '{"prompt": "a"}\n{"prompt": "a2", "prompt": "b"}\n')
    for read in (lambda: read_prompts(corpus), lambda: check_unique_ids(corpus, "prompt", "prompt_id")):
        message = refused(r"line 2 names the key 'prompt' twice", read)
        assert corpus in message and "keep one 'prompt' per row" in message
    row = {"prompt": "p", "chosen": "x", "rejected": "y"}
    feedback = write(tmp_path / "f.jsonl", json.dumps(row)[:-1] + ', "group": "helpful", "group": "harmless"}\n')
    refused(f"feedback '{feedback}': line 1 names the key 'group' twice", read_feedback, feedback, POLICIES)
    array = write(tmp_path / "f.json", "[" + json.dumps({**row, "group": "helpful"})[:-1] + ', "chosen": "z"}]')
    refused("row 0 names the key 'chosen' twice", read_feedback, array, POLICIES)
    header = write(tmp_path / "c.csv", "prompt,prompt\na,b\n")  # the CSV form of the same mistake
    refused(r"the header \(line 1\) names the column 'prompt' twice", read_prompts, header)


def test_case4_a_byte_order_mark_is_stripped(tmp_path):
    rows = [{"id": "007", "prompt": "a"}, {"id": 8, "prompt": "b"}]
    for name, text in [("c.jsonl", jsonl(rows)), ("c.csv", "id,prompt\n007,a\n8,b\n")]:
        plain, marked = write(tmp_path / f"plain-{name}", text), write(tmp_path / f"bom-{name}", BOM + text)
        assert read_prompts(marked, id_column="id") == read_prompts(plain, id_column="id") == (["007", "8"], ["a", "b"])
        assert check_unique_ids(marked, "prompt", "id") == check_unique_ids(plain, "prompt", "id")
    pair = {"prompt": "p", "chosen": "x", "rejected": "y", "group": "helpful"}
    for name, text in [
        ("f.jsonl", jsonl([pair])),
        ("f.json", json.dumps([pair])),
        ("f.csv", "prompt,chosen,rejected,group\np,x,y,helpful\n"),
    ]:
        fb = read_feedback(write(tmp_path / name, BOM + text), POLICIES)
        assert (fb.prompts, fb.chosen, fb.rejected, fb.groups) == (["p"], ["x"], ["y"], ["helpful"])


def test_case5_json_number_and_text_ids_are_one_id_csv_texts_are_not(tmp_path):
    assert row_id(1, "a") == row_id("1", "b") == "1"
    corpus = write(tmp_path / "c.jsonl", jsonl([{"id": 1, "prompt": "a"}, {"id": "1", "prompt": "b"}]))
    refused("prompt id '1' appears at rows 0 and 1", read_prompts, corpus, id_column="id")
    refused("rows 0 and 1 share the id '1'", check_unique_ids, corpus, "prompt", "id")
    csv = write(tmp_path / "c.csv", "id,prompt\n007,a\n7,b\n")
    assert read_prompts(csv, id_column="id") == (["007", "7"], ["a", "b"])
    assert check_unique_ids(csv, "prompt", "id") == {"007": "a", "7": "b"}


def test_jsonl_lines_end_only_at_line_breaks(tmp_path):
    """JSON allows U+2028 / U+0085 unescaped inside a string; `str.splitlines` would cut the row there."""
    text = "one\u2028two\x85three"
    corpus = write(tmp_path / "c.jsonl", json.dumps({"prompt": text}, ensure_ascii=False) + "\r\n")
    assert read_prompts(corpus) == ([prompt_id(text)], [text])


def test_ray_data_reader_gives_the_rows_the_driver_checked(tmp_path, local_ray):
    """generate: the ids, texts and seeds its workers derive are the driver's, for every typing case above."""
    from mpo_ray.runtime import data
    from mpo_ray.workflows.generate import prepare_rows

    pq.write_table(
        pa.table({"id": pa.array([1, None, 3], pa.int64()), "prompt": ["a", "b", "c"]}), tmp_path / "ints.parquet"
    )  # a null makes Arrow → numpy turn the ids into floats (1 → "1.0")
    json_rows = [
        {"id": "007", "prompt": "a"},
        {"id": 7, "prompt": "b"},
        {"prompt": 42},
        {"id": None, "prompt": "c\u2028d"},
        {"id": 2.5, "prompt": "e"},
    ]
    uris = [
        ("csv", write(tmp_path / "c.csv", BOM + "id,prompt\n007,a\n7,42\n1.10,NA\n,no id\n")),
        ("json", write(tmp_path / "c.jsonl", BOM + jsonl(json_rows))),
        ("json", write(tmp_path / "array.json", BOM + json.dumps(json_rows))),  # one JSON array: the same rows
        ("parquet", str(tmp_path / "ints.parquet")),
    ]
    data.configure(progress=False)
    for fmt, uri in uris:
        driver = check_unique_ids(uri, "prompt", "id")
        ds = data.read_corpus(uri, fmt, "prompt")
        rows = data.map_rows(
            ds,
            prepare_rows,
            batch_size=4,
            fn_kwargs={"prompt_column": "prompt", "id_column": "id", "seed": 3, "done": frozenset()},
        ).take_all()
        assert {r["prompt_id"]: r["prompt"] for r in rows} == driver, fmt  # rows come back in any order
        assert all(r["seed"] == derive_seed(3, r["prompt_id"]) for r in rows)
        errors = {r["prompt_id"] for r in rows if r["error"]}
        if fmt == "csv":
            assert {"007", "7", "1.10"} < set(driver) and driver["7"] == "42" and not errors
        if fmt == "json":
            assert set(driver) == {"007", "7", prompt_id("42"), prompt_id("c\u2028d"), "2.5"}
            assert errors == {prompt_id("42")}
        if fmt == "parquet":
            assert set(driver) == {"1", "3", prompt_id("b")}
