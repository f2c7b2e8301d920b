"""Nightly reweighting: the weights store, feedback, the gate, and three simulated nights on local Ray.

Fast tests cover the pure parts (store, lock, recovery, feedback, agreement,
gate, config) and the failures that must happen before any model runs. The
slow test runs three nights of workflows/data/nightly/ through `mpo-ray
nightly` on tiny models: an ordinary night, a spike of one kind of prompt
(drift: not promoted), an ordinary night again, with a crash between writing a
version and moving `latest`, and reruns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
import yaml
from tiny import ROOT, TINY_CONFIG

from mpo_ray.cli import main
from mpo_ray.config import ConfigError, GateConfig, config_from_dict, load_config
from mpo_ray.core.gate import FeedbackEvaluation, agreement
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsRecord, resolve
from mpo_ray.io.feedback import read_feedback
from mpo_ray.io.store import ScoreCache, StoreConflict, WeightsStore
from mpo_ray.workflows.nightly import evaluate_feedback, gate_checks, plan_night, run_night

DATA = os.path.join(ROOT, "workflows", "data", "nightly")
NIGHTS = ["2025-06-01", "2025-06-02", "2025-06-03"]
NAMES = ["concise", "detailed", "upbeat"]


@pytest.fixture(params=["local", "memory"])
def store_uri(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
    else:
        uri = f"memory://nightly-{uuid.uuid4().hex[:8]}/store"
        yield uri
        fs, path = storage.filesystem(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def artifact(version, weights, *, passed=True, previous=None, inputs=None):
    """A minimal weights artifact as a night writes it."""
    return WeightsRecord.build(
        version=version,
        policies=NAMES,
        weights=weights,
        beta=0.1,
        nightly={
            "night": version,
            "previous": previous,
            "inputs": inputs or {},
            "gate": {"passed": passed, "failed": [] if passed else ["drift"], "checks": []},
        },
    )


# --------------------------------------------------------------------------- #
# The weights store
# --------------------------------------------------------------------------- #


def test_the_nightly_record_is_a_typed_view_over_the_json_keys(tmp_path):
    """`artifact.nightly` reads the keys a night writes; a reweight artifact has none, a partial record never
    passed."""
    kept = artifact("2025-06-02", [0.5, 0.3, 0.2], passed=False, previous="2025-06-01", inputs={"prompts": "d"})
    kept.write(str(tmp_path / "w.json"))
    night = WeightsRecord.read(str(tmp_path / "w.json")).nightly
    assert (night.night, night.previous, night.passed, night.failed, night.inputs) == (
        "2025-06-02",
        "2025-06-01",
        False,
        ["drift"],
        {"prompts": "d"},
    )
    assert kept.to_json()["nightly"]["gate"]["passed"] is False  # the JSON keys stay as they were
    assert WeightsRecord.build(version="v", policies=NAMES, weights=[0.5, 0.3, 0.2], beta=0.1).nightly is None
    assert not WeightsRecord.build(
        version="v", policies=NAMES, weights=[0.5, 0.3, 0.2], beta=0.1, nightly={"night": "v"}
    ).nightly.passed


def test_versions_are_written_once_and_latest_moves_by_compare_and_swap(store_uri):
    st = WeightsStore(store_uri)
    assert st.latest() is None and st.versions() == []
    st.write_version("2025-06-01", artifact("2025-06-01", [0.5, 0.3, 0.2]), {"report.md": "# one\n"})
    with pytest.raises(FileExistsError, match="never overwritten"):
        st.write_version("2025-06-01", artifact("2025-06-01", [1.0, 0.0, 0.0]))
    st.promote("2025-06-01", expected=None)
    st.write_version("2025-06-02", artifact("2025-06-02", [0.4, 0.4, 0.2], previous="2025-06-01"))
    with pytest.raises(StoreConflict, match="another run promoted"):
        st.promote("2025-06-02", expected=None)  # gated against an older `latest`
    pointer = st.promote("2025-06-02", expected="2025-06-01")
    assert pointer["previous"] == "2025-06-01" and pointer["history"] == ["2025-06-01", "2025-06-02"]
    assert st.versions() == ["2025-06-01", "2025-06-02"]
    assert st.read_version("2025-06-01").weights == [0.5, 0.3, 0.2]  # history intact
    assert storage.read_text(st.version_uri("2025-06-01", "report.md")) == "# one\n"
    fs, path = storage.filesystem(store_uri)
    assert not [p for p in fs.find(path) if "_tmp-" in p]


def test_a_version_without_weights_json_is_not_committed(store_uri):
    st = WeightsStore(store_uri)
    storage.write_text(st.version_uri("2025-06-01", "report.md"), "a crash left only this\n")
    assert st.versions() == [] and st.read_version("2025-06-01") is None
    with pytest.raises(ValueError, match="not committed"):
        st.promote("2025-06-01", expected=None)


def test_lock_is_exclusive_and_a_stale_one_is_broken(store_uri):
    st = WeightsStore(store_uri)
    with st.lock(owner="night A", timeout_s=60):
        with pytest.raises(StoreConflict, match="locked by 'night A'"):
            with st.lock(owner="night B", timeout_s=60):
                pass
    with st.lock(owner="night B", timeout_s=60):  # released on exit
        pass
    # A crashed run's lock (written long ago) is broken once older than the timeout.
    lock = storage.join(store_uri, "latest.lock")
    storage.write_json(lock, {"owner": "crashed", "token": "x", "acquired_unix": time.time() - 120})
    with pytest.raises(StoreConflict, match="crashed"):
        with st.lock(owner="night C", timeout_s=600):
            pass
    with st.lock(owner="night C", timeout_s=60):
        assert json.loads(storage.read_text(lock))["owner"] == "night C"
    assert not storage.exists(lock)
    # A lock whose body is not written yet (its creator is mid-write) is fresh by its file time, never stale.
    storage.write_text(lock, "")
    with pytest.raises(StoreConflict, match="locked by None"):
        with st.lock(owner="night D", timeout_s=60):
            pass
    if "://" not in store_uri:  # ...unless the file is old: a crash cut it
        os.utime(lock, (time.time() - 120, time.time() - 120))
        with st.lock(owner="night D", timeout_s=60):
            pass


def test_concurrent_lockers_one_wins(store_uri):
    import threading

    st, barrier, outcomes = WeightsStore(store_uri), threading.Barrier(6), []

    def contend(i):
        barrier.wait()
        try:
            with st.lock(owner=f"run {i}", timeout_s=600):
                time.sleep(1.0)
            outcomes.append("won")
        except StoreConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]


def test_crash_between_version_and_latest_is_completed_by_the_next_run(store_uri):
    st = WeightsStore(store_uri)
    st.write_version("2025-06-01", artifact("2025-06-01", [0.5, 0.3, 0.2]))
    st.promote("2025-06-01", expected=None)
    # Night 2 passed its gate, wrote its version, and died before moving `latest` (leaving its lock behind).
    st.write_version("2025-06-02", artifact("2025-06-02", [0.4, 0.4, 0.2], previous="2025-06-01"))
    storage.write_json(
        storage.join(store_uri, "latest.lock"), {"owner": "nightly 2025-06-02", "acquired_unix": time.time() - 3600}
    )
    # Consistent meanwhile: readers get the complete old weights; the new version is complete too.
    assert st.latest_version() == "2025-06-01" and resolve(store_uri).endswith("versions/2025-06-01/weights.json")
    assert st.pending() == "2025-06-02"
    # A night that failed its gate, or was gated against another `latest`, is never promoted by recovery.
    st.write_version("2025-06-03", artifact("2025-06-03", [0.1, 0.1, 0.8], passed=False, previous="2025-06-01"))
    assert st.recover(owner="nightly 2025-06-04", timeout_s=600) == "2025-06-02"
    assert st.latest()["history"] == ["2025-06-01", "2025-06-02"] and st.latest()["previous"] == "2025-06-01"
    assert st.pending() is None and st.recover(owner="again", timeout_s=600) is None


def test_recovery_never_repromotes_a_version_that_was_latest_before(store_uri):
    st = WeightsStore(store_uri)
    st.write_version("a", artifact("a", [0.5, 0.5, 0.0]))
    st.promote("a", expected=None)
    st.write_version("b", artifact("b", [0.4, 0.4, 0.2], previous="a"))
    st.promote("b", expected="a")
    st.promote("a", expected="b", reason="rolled back by hand")  # `a` again; `b` was gated against `a`...
    assert st.pending() is None and st.pending("b") is None  # ...but it was latest once: not a crashed promotion
    # A backfilled night (its id sorts before `latest`) that crashed before promoting: its own rerun finishes it.
    st.write_version("0-backfill", artifact("0-backfill", [0.3, 0.3, 0.4], previous="a"))
    assert st.pending() is None and st.pending("0-backfill") == "0-backfill"


def test_generation_reads_latest_or_a_pinned_version(store_uri, tmp_path):
    from mpo_ray.workflows.generate import resolve_weights

    st = WeightsStore(store_uri)
    config = config_from_dict(
        {**yaml.safe_load(open(TINY_CONFIG)), "generate": {"prompts": "p.jsonl", "weights_uri": store_uri}}
    )
    st.write_version("2025-06-01", artifact("2025-06-01", [0.5, 0.3, 0.2]))
    with pytest.raises(ValueError, match="no `latest` yet"):
        resolve_weights(config)
    st.promote("2025-06-01", expected=None)
    st.write_version("2025-06-02", artifact("2025-06-02", [0.2, 0.3, 0.5], previous="2025-06-01"))
    st.promote("2025-06-02", expected="2025-06-01")
    assert resolve_weights(config) == ([0.2, 0.3, 0.5], "2025-06-02")
    pinned = storage.join(store_uri, "versions", "2025-06-01")
    assert resolve_weights(config.with_overrides({"generate.weights_uri": pinned})) == ([0.5, 0.3, 0.2], "2025-06-01")
    pinned_file = storage.join(pinned, "weights.json")
    assert resolve_weights(config.with_overrides({"generate.weights_uri": pinned_file}))[1] == "2025-06-01"


def test_score_cache_reuses_rows_by_prompt_id_and_text(store_uri):
    cache = ScoreCache(WeightsStore(store_uri), "fp")
    rows = pa.table(
        {
            "prompt_id": ["a", "a", "b", "b"],
            "sample_idx": [0, 1, 0, 1],
            "prompt": ["A?", "A?", "B?", "B?"],
            "logp_ref": [-1.0, -2.0, -3.0, -4.0],
        }
    )
    storage.write_parquet(storage.join(cache.uri, "part-2025-06-01-00000.parquet"), rows)
    storage.write_parquet(
        storage.join(cache.uri, "part-2025-06-02-00000.parquet"), rows.slice(0, 2)
    )  # a again (a concurrent run): used once only
    found, ids = cache.lookup(["a", "b", "c"], ["A?", "B, edited?", "C?"])
    assert ids == {"a"} and found.num_rows == 2 and found.column("logp_ref").to_pylist() == [-1.0, -2.0]
    assert ScoreCache(WeightsStore(store_uri), "other-models").lookup(["a"], ["A?"]) == (None, set())


# --------------------------------------------------------------------------- #
# Feedback, agreement, the gate
# --------------------------------------------------------------------------- #


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIR = {
    "prompt": "Tell me about rain.",
    "chosen": "Rain: wet.",
    "rejected": "Well, rain is a long story...",
    "group": "concise",
}


def test_feedback_reads_in_every_format(tmp_path):
    fb = read_feedback(os.path.join(DATA, NIGHTS[0], "feedback.jsonl"), NAMES)
    assert len(fb) == 30 and fb.counts() == {"concise": 10, "detailed": 10, "upbeat": 10}
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([PAIR, {**PAIR, "group": "upbeat"}])
    pq.write_table(table, tmp_path / "f.parquet")
    pacsv.write_csv(table, tmp_path / "f.csv")
    for name in ("f.parquet", "f.csv"):
        assert read_feedback(str(tmp_path / name), NAMES).groups == ["concise", "upbeat"]


@pytest.mark.parametrize(
    "rows, match",
    [
        ([], "is empty"),
        ([{k: v for k, v in PAIR.items() if k != "group"}], r"lacks column\(s\) \['group'\]"),
        ([PAIR, {**PAIR, "group": "funny"}], r"group 'funny' \(row 1, 1 row\(s\)\) is not an objective"),
        ([{**PAIR, "chosen": ""}], "column 'chosen' must hold non-empty strings; row 0"),
        ([{**PAIR, "rejected": PAIR["chosen"]}], "same text as chosen and rejected"),
    ],
)
def test_malformed_feedback_is_refused_with_the_reason(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        read_feedback(write_jsonl(tmp_path / "f.jsonl", rows), NAMES)


def test_agreement_counts_pairs_ranked_as_labelled():
    # margins ℓ_k(chosen) − ℓ_k(rejected) for K = 2 objectives
    margins = np.array([[1.0, -3.0], [2.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
    groups = ["a", "a", "b", "b"]
    assert agreement(margins, groups, [1.0, 0.0]) == {"a": 1.0, "b": 0.25, "min": 0.25}  # a tie counts half
    assert agreement(margins, groups, [0.5, 0.5]) == {"a": 0.5, "b": 0.5, "min": 0.5}
    ev = evaluate_feedback(margins, groups, ["x", "y"], [0.5, 0.5], previous=[1.0, 0.0])
    assert ev.pairs == {"a": 2, "b": 2} and ev.previous["min"] == 0.25 and ev.single["y"]["a"] == 0.0


def test_gate_says_which_check_failed():
    gate = GateConfig(max_gap=1e-6, min_median_ess=2.0, max_agreement_drop=0.05, max_drift=0.2)
    ev = FeedbackEvaluation(pairs={}, mixed={"min": 0.6}, previous={"min": 0.7}, single={})
    first = gate_checks(gate, [0.5, 0.5], 1e-9, 3.0, None, None)  # the first night: nothing to compare with
    assert all(c.passed for c in first) and "first night" in first[-1].detail
    failed = {c.check: c for c in gate_checks(gate, [0.9, 0.1], 1e-3, 1.5, [0.5, 0.5], ev) if not c.passed}
    assert sorted(failed) == ["agreement", "drift", "ess", "gap"]
    assert failed["drift"].value == pytest.approx(0.4) and "new λ 0.6, latest λ 0.7" in failed["agreement"].detail
    ok = gate_checks(
        gate, [0.55, 0.45], 1e-9, 3.0, [0.5, 0.5], dataclasses.replace(ev, mixed={"min": 0.66}, previous={"min": 0.7})
    )
    assert all(c.passed for c in ok)
    wide = GateConfig(max_ci_width=0.3)
    checks = {c.check: c for c in gate_checks(wide, [0.5, 0.5], 1e-9, 3.0, None, None, ci_width=0.42)}
    assert not checks["ci_width"].passed and checks["ci_width"].value == 0.42
    assert gate_checks(wide, [0.5, 0.5], 1e-9, 3.0, None, None, ci_width=0.2)[-1].passed


# --------------------------------------------------------------------------- #
# Config and the failures that come before any model runs
# --------------------------------------------------------------------------- #


def test_nightly_section_loads_and_bad_keys_name_key_and_file():
    c = load_config(TINY_CONFIG)
    assert c.nightly.prompts == os.path.join(DATA, "{night}", "prompts.jsonl") and os.path.isabs(c.nightly.store)
    assert c.nightly.gate.max_drift == 0.1 and c.nightly.sampling.samples_per_prompt == 4
    raw = yaml.safe_load(open(TINY_CONFIG))
    for mutate, match in [
        (lambda n: n["gate"].update(max_drfit=0.1), r"tiny.yaml: unknown key `nightly.gate.max_drfit`"),
        (lambda n: n.update(batch_prompts="16"), r"`nightly.batch_prompts` must be int"),
        (lambda n: n["gate"].update(min_median_ess=5.0), "ESS is at most sampling.samples_per_prompt = 4"),
        (lambda n: n["gate"].update(max_drift=2), r"`nightly.gate.max_drift` must be in \[0, 1\]"),
        (lambda n: n.update(night="../etc"), "`nightly.night` is '../etc'; use a date"),
        (lambda n: n.pop("store"), "`nightly.store` is required"),
    ]:
        data = json.loads(json.dumps(raw))
        mutate(data["nightly"])
        with pytest.raises(ConfigError, match=match):
            config_from_dict(data, source=TINY_CONFIG)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([], "is empty"),
        ([{k: v for k, v in PAIR.items() if k != "rejected"}], "lacks column"),
        ([{**PAIR, "group": "funny"}], "is not an objective"),
    ],
)
def test_a_night_with_malformed_feedback_fails_clearly_and_leaves_latest_alone(tmp_path, capsys, rows, match):
    store = str(tmp_path / "store")
    st = WeightsStore(store)
    st.write_version("2025-06-01", artifact("2025-06-01", [0.5, 0.3, 0.2]))
    st.promote("2025-06-01", expected=None)
    before = storage.read_text(storage.join(store, "latest.json"))
    bad = write_jsonl(tmp_path / "feedback.jsonl", rows)
    code = main(["nightly", TINY_CONFIG, "--night", "2025-06-02", "--store", store, "--feedback", bad, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and match.split()[0] in err and err.count("\n") == 1, err
    assert storage.read_text(storage.join(store, "latest.json")) == before
    assert st.versions() == ["2025-06-01"] and not os.path.exists(os.path.join(store, "scores"))


def test_other_bad_inputs_are_user_errors(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["nightly", TINY_CONFIG, "--night", "1999-01-01", "--store", store]) == 2  # no prompts for that night
    assert "does not exist" in capsys.readouterr().err
    assert main(["nightly", TINY_CONFIG, "--night", "bad/night", "--store", store]) == 2
    assert "`nightly.night` is 'bad/night'" in capsys.readouterr().err
    st = WeightsStore(store)  # a store of another mixture
    st.write_version("x", WeightsRecord.build(version="x", policies=["a", "b"], weights=[0.5, 0.5], beta=0.1))
    st.promote("x", expected=None)
    assert main(["nightly", TINY_CONFIG, "--night", NIGHTS[0], "--store", store]) == 2
    assert "a new mixture needs a new `nightly.store`" in capsys.readouterr().err


def test_a_crashed_promotion_of_this_night_is_finished_by_its_rerun_without_recomputing(tmp_path):
    """The rerun finds the committed version (same inputs), moves `latest` and computes nothing (no Ray here)."""
    store = str(tmp_path / "store")
    config = load_config(TINY_CONFIG)
    plan = plan_night(config.with_overrides({"nightly.night": NIGHTS[0], "nightly.store": store}))
    plan.store.write_version(NIGHTS[0], artifact(NIGHTS[0], [0.5, 0.3, 0.2], inputs=plan.inputs))  # ...then the crash
    assert plan.store.latest() is None
    result = run_night(config.with_overrides({"nightly.night": NIGHTS[0], "nightly.store": store}), progress=False)
    assert result.rerun and result.recovered and result.passed and result.exit_code == 0 and result.latest == NIGHTS[0]
    assert "finished its interrupted promotion" in result.summary()
    again = run_night(config.with_overrides({"nightly.night": NIGHTS[0], "nightly.store": store}), progress=False)
    assert again.rerun and not again.recovered and "nothing changed" in again.summary()
    # The same night with other inputs is refused: a version is never overwritten.
    other = write_jsonl(tmp_path / "f.jsonl", [PAIR])
    with pytest.raises(ValueError, match=r"changed: \['feedback'\].*--night 2025-06-01.2"):
        run_night(
            config.with_overrides({"nightly.night": NIGHTS[0], "nightly.store": store, "nightly.feedback": other}),
            progress=False,
        )


def stub_scoring(monkeypatch, during=None):
    """Replace the score pipeline (the Ray part) by random numbers; ``during(plan)`` runs mid-night."""
    import mpo_ray.workflows.nightly as nightly
    from mpo_ray.io.schemas import score_table_schema
    from mpo_ray.workflows.pipeline import ScoreRun, Timings

    planned, real_plan = {}, nightly.plan_night

    def plan_night(config):
        planned["plan"] = real_plan(config)
        return planned["plan"]

    def run_pipeline(models, section, batches, **_):
        plan, config = planned["plan"], models.config
        if during:
            during(plan)
        ids = [i for b in batches for i in b.ids]
        prompts = [q for b in batches for q in b.prompts]
        schema = score_table_schema(config.policy_names, [r.name for r in config.rewards])
        rng = np.random.default_rng(len(ids))
        n, m = len(ids), 4
        columns = {
            "prompt_id": np.repeat(ids, m),
            "sample_idx": np.tile(np.arange(m, dtype=np.int32), n),
            "prompt": np.repeat(prompts, m),
            "response": ["r"] * (n * m),
            "response_token_ids": [[1]] * (n * m),
            "sampler": ["ref"] * (n * m),
            "logp_ref": np.full(n * m, -5.0),
            "logp_proposal": np.full(n * m, -5.0),
        }
        for name in schema.names[len(columns) :]:
            columns[name] = -5.0 + 0.3 * rng.normal(size=n * m)
        return ScoreRun(pa.table(columns, schema=schema), Timings(), {})

    def score_feedback(models, fb):
        return np.random.default_rng(len(fb)).normal(size=(len(fb), len(NAMES)))

    monkeypatch.setattr(nightly, "plan_night", plan_night)
    monkeypatch.setattr(nightly, "run_pipeline", run_pipeline)
    monkeypatch.setattr(nightly, "_score_feedback", score_feedback)


def test_a_night_whose_latest_moves_meanwhile_writes_nothing_and_exits_4(tmp_path, monkeypatch, capsys):
    store = str(tmp_path / "store")
    st = WeightsStore(store)

    def concurrent_night(plan):  # another night commits and promotes while this one scores
        st.write_version("2025-05-31", artifact("2025-05-31", [0.4, 0.3, 0.3]))
        st.promote("2025-05-31", expected=None)

    stub_scoring(monkeypatch, during=concurrent_night)
    assert main(["nightly", TINY_CONFIG, "--night", NIGHTS[0], "--store", store, "--quiet"]) == 4
    assert "`latest` moved from None to '2025-05-31'" in capsys.readouterr().err
    assert st.versions() == ["2025-05-31"] and st.latest_version() == "2025-05-31"
    stub_scoring(monkeypatch)  # the retry gates against the new `latest`
    assert main(["nightly", TINY_CONFIG, "--night", NIGHTS[0], "--store", store, "--quiet"]) in (0, 3)
    assert st.read_version(NIGHTS[0]).nightly.previous == "2025-05-31"


def test_two_runs_of_one_night_commit_once(tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    st = WeightsStore(store)

    def the_other_run_commits_first(plan):  # both started on an empty store; the other reached the lock first...
        st.write_version(
            NIGHTS[0], artifact(NIGHTS[0], [0.5, 0.3, 0.2], inputs=plan.inputs)
        )  # ...and died before `latest`

    stub_scoring(monkeypatch, during=the_other_run_commits_first)
    result = run_night(
        load_config(TINY_CONFIG).with_overrides({"nightly.night": NIGHTS[0], "nightly.store": store}), progress=False
    )
    committed = st.read_version(NIGHTS[0])
    assert result.rerun and result.recovered and result.artifact == committed and committed.weights == [0.5, 0.3, 0.2]
    assert st.versions() == [NIGHTS[0]] and st.latest()["history"] == [NIGHTS[0]]


# --------------------------------------------------------------------------- #
# Slow: three nights on local Ray with tiny models
# --------------------------------------------------------------------------- #


def store_snapshot(uri: str) -> dict:
    fs, path = storage.filesystem(uri)
    return {p: fs.cat(p) for p in sorted(fs.find(path))}


@pytest.fixture(scope="module")
def three_nights(tmp_path_factory):
    """Nights 1 and 2 through the CLI; night 3 crashes between its version and `latest`, then runs again;
    then reruns."""
    from mpo_ray.runtime.session import ray_session

    raw = yaml.safe_load(open(TINY_CONFIG))
    for key in ("reweight", "generate"):
        raw.pop(key)
    raw["rewards"] = []  # fewer actors to start each night; the reward columns are reweight's tests' business
    store = f"memory://nightly-e2e-{uuid.uuid4().hex[:8]}/store"
    raw["nightly"].update(
        prompts=os.path.join(DATA, "{night}", "prompts.jsonl"),
        feedback=os.path.join(DATA, "{night}", "feedback.jsonl"),
        store=store,
    )
    cfg = str(tmp_path_factory.mktemp("nightly") / "tiny-nightly.yaml")
    with open(cfg, "w") as f:
        yaml.safe_dump(raw, f)
    st, log = WeightsStore(store), {}

    def night(name):
        t0 = time.perf_counter()
        code = main(["nightly", cfg, "--night", name, "--quiet"])
        return {
            "code": code,
            "seconds": round(time.perf_counter() - t0, 1),
            "latest": st.latest_version(),
            "versions": st.versions(),
        }

    try:
        with ray_session(address="local", num_cpus=2, log_to_driver=False):
            log[NIGHTS[0]] = night(NIGHTS[0])
            log[NIGHTS[1]] = night(NIGHTS[1])
            t0 = time.perf_counter()
            with pytest.MonkeyPatch.context() as mp:  # night 3 passes its gate, writes its version, and dies
                mp.setattr(
                    WeightsStore,
                    "promote",
                    lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed before moving latest")),
                )
                with pytest.raises(RuntimeError, match="killed before moving latest"):
                    main(["nightly", cfg, "--night", NIGHTS[2], "--quiet"])
            log["crash"] = {
                "latest": st.latest_version(),
                "versions": st.versions(),
                "weights": resolve(store),
                "lock": storage.exists(storage.join(store, "latest.lock")),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            log[NIGHTS[2]] = night(NIGHTS[2])
            before = store_snapshot(store)
            log["reruns"] = {n: night(n) for n in NIGHTS}
            log["unchanged"] = store_snapshot(store) == before
            yield st, log
    finally:
        fs, path = storage.filesystem(store)
        if fs.exists(path):
            fs.rm(path, recursive=True)


@pytest.mark.slow
def test_versions_accumulate_and_latest_moves_only_on_passing_nights(three_nights):
    st, log = three_nights
    n1, n2, n3 = NIGHTS
    assert log[n1] | {"seconds": 0} == {"code": 0, "seconds": 0, "latest": n1, "versions": [n1]}
    assert log[n2]["code"] == 3 and log[n2]["latest"] == n1 and log[n2]["versions"] == [n1, n2]  # the spike: kept
    a2 = st.read_version(n2)
    assert a2.nightly.gate.failed == ["drift"] and a2.nightly.previous == n1
    report = storage.read_text(st.version_uri(n2, "report.md"))
    assert "**not promoted**: `latest` stays 2025-06-01 (failed: drift)" in report and "| drift | **NO** |" in report
    assert log[n3]["code"] == 0 and log[n3]["latest"] == n3 and st.versions() == NIGHTS
    assert st.latest()["history"] == [n1, n3]
    for n in NIGHTS:  # every version is a complete weights artifact with its report and the feedback it was judged on
        a = st.read_version(n)
        assert a.version == n and a.policies == NAMES and abs(sum(a.weights) - 1) < 1e-9
        assert a.certificate.gap_nats <= 1e-9 and storage.exists(st.version_uri(n, "feedback.parquet"))
        ev = a.nightly.feedback
        assert ev.pairs == {"concise": 10, "detailed": 10, "upbeat": 10} and set(ev.single) == set(NAMES)
        assert ev.mixed["min"] == min(ev.mixed[g] for g in ev.pairs)


@pytest.mark.slow
def test_warm_starts_take_fewer_solver_iterations_than_cold_starts(three_nights):
    st, _ = three_nights
    rows = {n: st.read_version(n).nightly for n in NIGHTS}
    print("\nnight       warm from   iterations warm/cold   initial gap warm/cold   drift")
    for n, r in rows.items():
        w = r.warm_start
        drift = next(c.value for c in r.gate.checks if c.check == "drift")
        print(
            f"{n}  {str(w.start):10s}  {w.iterations:>4d} / {w.cold_iterations:<4d}          "
            f"{w.initial_gap:.3g} / {w.cold_initial_gap:.3g}        {drift if drift is None else round(drift, 3)}"
        )
    assert rows[NIGHTS[0]].warm_start.start is None
    assert rows[NIGHTS[1]].warm_start.start == rows[NIGHTS[2]].warm_start.start == NIGHTS[0]  # not the kept night
    for n in NIGHTS[1:]:
        w = rows[n].warm_start
        assert w.initial_gap < w.cold_initial_gap and w.iterations <= w.cold_iterations
    w3 = rows[NIGHTS[2]].warm_start  # an ordinary night after an ordinary night: the optimum barely moved
    assert w3.iterations < w3.cold_iterations


@pytest.mark.slow
def test_only_new_prompts_are_scored(three_nights):
    st, _ = three_nights
    tables = {n: st.read_version(n).score_table for n in NIGHTS}
    assert [(t.reused_prompts, t.scored_prompts) for t in tables.values()] == [(0, 48), (12, 18), (49, 7)]
    assert len({t.uri for t in tables.values()}) == 1 and all(t.rows == 4 * t.prompts for t in tables.values())


@pytest.mark.slow
def test_a_crash_between_version_and_latest_leaves_the_store_consistent(three_nights):
    _, log = three_nights
    crash = log["crash"]
    assert crash["latest"] == NIGHTS[0] and crash["weights"].endswith(f"versions/{NIGHTS[0]}/weights.json")
    assert crash["versions"] == NIGHTS and not crash["lock"]  # the version is complete; readers still get night 1
    assert log[NIGHTS[2]]["code"] == 0 and log[NIGHTS[2]]["latest"] == NIGHTS[2]  # the next run completed it


@pytest.mark.slow
def test_reruns_are_no_ops(three_nights):
    _, log = three_nights
    assert {n: r["code"] for n, r in log["reruns"].items()} == dict(zip(NIGHTS, [0, 3, 0]))
    assert log["unchanged"] and all(
        r["latest"] == NIGHTS[2] and r["versions"] == NIGHTS for r in log["reruns"].values()
    )
    print(
        "\nseconds per night:",
        {n: log[n]["seconds"] for n in NIGHTS[:2]},
        f"{NIGHTS[2]}: {log['crash']['seconds']} (crashed) + {log[NIGHTS[2]]['seconds']} (completed)",
        "reruns:",
        {n: r["seconds"] for n, r in log["reruns"].items()},
    )
