"""weights.json through its one type: artifacts written before the type load unchanged, every key is checked,
and docs/design.md §4 lists exactly the type's keys.

The fixtures in data/ are real artifacts: `weights-reweight.json` and `weights-nightly.json` as `reweight` and
`nightly` wrote them before weights.json had a type (a night gated against an earlier `latest`, with feedback),
`weights-before-serving.json` from before the `serving` block and `sampling.geometric_share` existed.
"""

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
from tiny import ROOT

from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.artifact import REQUIRED_KEYS, WeightsRecord
from mpo_ray.io.schemas import document_fields

DATA = Path(__file__).parent / "data"
FIXTURES = ["weights-reweight.json", "weights-nightly.json", "weights-before-serving.json"]


@pytest.mark.parametrize("name", FIXTURES)
def test_artifacts_written_before_the_type_load_and_write_back_byte_for_byte(tmp_path, name):
    record = WeightsRecord.read(str(DATA / name))
    record.write(str(tmp_path / "weights.json"))
    assert (tmp_path / "weights.json").read_bytes() == (DATA / name).read_bytes()
    assert WeightsRecord.read(str(tmp_path)) == record


def test_every_block_reads_as_attributes():
    night = WeightsRecord.read(str(DATA / "weights-nightly.json"))
    n = night.nightly
    assert (n.previous, n.warm_start.start, n.passed, n.failed) == ("2025-05-31", "2025-05-31", False, ["drift"])
    assert [c.check for c in n.gate.checks] == ["gap", "ess", "agreement", "drift"] and not n.gate.checks[3].passed
    assert n.feedback.pairs == {"concise": 10, "detailed": 10, "upbeat": 10} and n.feedback.mixed["min"] == 0.5
    assert night.score_table.reused_prompts == 0 and night.score_table.scored_prompts == 48
    assert night.certificate.gap_nats == night.estimates["implicit"]["gap"] and night.ess.median_at_uniform > 0
    assert night.models.policies[0].adapter == "tiny:lora-1" and night.models.reference.verified
    assert night.streaming_bsmd is None and night.serving.decoding_cost == 4
    reweight = WeightsRecord.read(str(DATA / "weights-reweight.json"))
    assert reweight.nightly is None and len(reweight.streaming_bsmd.weights) == 3
    assert reweight.weights_ci_method.resamples == 200 and set(reweight.weights_ci) == set(reweight.policies)
    old = WeightsRecord.read(str(DATA / "weights-before-serving.json"))
    assert old.serving is None and old.solver.converged and "geometric_share" not in old.sampling


def test_from_json_reads_a_parsed_document_and_to_json_gives_it_back():
    doc = json.loads((DATA / "weights-nightly.json").read_text())
    record = WeightsRecord.from_json(doc, "weights-nightly.json")
    assert record.to_json() == {k: v for k, v in doc.items() if k != storage.SEAL}
    assert record.nightly.gate.passed is False and record.streaming_bsmd is None
    assert record.weights_ci is not None and record.source == "weights-nightly.json"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["ess"].update(median="3"), r"w\.json: `ess\.median` must be a number, got '3'"),
        (lambda d: d["certificate"].pop("gap_nats"), r"w\.json lacks `certificate\.gap_nats`"),
        (
            lambda d: d["nightly"]["gate"]["checks"][1].update(passed="yes"),
            r"w\.json: `nightly\.gate\.checks\[1\]\.passed` must be true or false",
        ),
        (lambda d: d["weights_ci"].update(concise=[0.1]), r"`weights_ci\.concise` must be a list of 2"),
        (lambda d: d["models"]["policies"].append(7), r"`models\.policies\[3\]` must be an object"),
        (lambda d: d["nightly"]["warm_start"].update({"from": 5}), r"`nightly\.warm_start\.from` must be a string"),
        (lambda d: d.update(weights=[0.5, "x", 0.5]), r"`weights\[1\]` must be a number"),
    ],
)
def test_a_malformed_key_is_named_in_one_line(tmp_path, change, message):
    doc = json.loads((DATA / "weights-nightly.json").read_text())
    change(doc)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(storage.sealed(doc)))
    with pytest.raises(UserError, match=message) as err:
        WeightsRecord.read(str(path))
    assert "\n" not in str(err.value)


def test_minimal_artifacts_load_and_keys_a_newer_writer_adds_are_ignored(tmp_path):
    record = WeightsRecord.build(version="v", policies=["a", "b"], weights=[1, 0], beta=0.1, future={"x": 1})
    assert record.weights == [1.0, 0.0] and record.certificate is None and not hasattr(record, "future")
    header = ["mpo-ray/weights", 1, "v", ["a", "b"], [1.0, 0.0], 0.1, "maxmin"]
    assert record.to_json() == dict(zip(REQUIRED_KEYS, header))  # nothing written that was not given
    with pytest.raises(UserError, match=r"weights v: `weights` must be finite, non-negative and not all zero"):
        dataclasses.replace(record, weights=[0.0, 0.0])  # built in code, checked as when read


# --------------------------------------------------------------------------- #
# docs/design.md §4 and the type
# --------------------------------------------------------------------------- #


def _type_keys(tp, seen=None) -> set[str]:
    """Every key of record type ``tp`` and of the records it holds, at any depth."""
    seen = set() if seen is None else seen
    if dataclasses.is_dataclass(tp):
        if tp in seen:
            return set()
        seen.add(tp)
        return {key for key, _, _ in document_fields(tp)} | {
            k for _, _, ftp in document_fields(tp) for k in _type_keys(ftp, seen)
        }
    return {k for arg in typing.get_args(tp) for k in _type_keys(arg, seen)}


def _documented_keys() -> set[str]:
    """The keys §4's weights-artifact entry names: `key` or `key, key, ...` in backticks (paths, quoted values,
    dotted names and <placeholders> are not keys)."""
    design = (Path(ROOT) / "docs" / "design.md").read_text()
    section = design[design.index("## 4. Data contracts") : design.index("## 5.")]
    entry = section[section.index("* **Weights artifact**") :]
    entry = entry[: entry.find("\n* **", 1) if "\n* **" in entry[1:] else len(entry)]
    words = [w.strip() for span in re.findall(r"`([^`]+)`", entry) for w in span.split(",")]
    return {w for w in words if re.fullmatch(r"[a-z][a-z0-9_]*", w)}


def test_design_notes_list_exactly_the_keys_of_the_type():
    keys = _type_keys(WeightsRecord) | {storage.SEAL}
    documented = _documented_keys()
    assert not keys - documented, f"in WeightsRecord but not in docs/design.md §4: {sorted(keys - documented)}"
    assert not documented - keys, f"in docs/design.md §4 but not in WeightsRecord: {sorted(documented - keys)}"
