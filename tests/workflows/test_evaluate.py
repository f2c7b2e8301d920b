"""Evaluation, sweep grids and plots, checked against hand-computed answers."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import TINY_CONFIG, generation_rows

from mpo_ray.core.grid import simplex_grid
from mpo_ray.core.stats import mean_ci, min_mean, paired_bootstrap, wilson, win_rates
from mpo_ray.demo.objectives import brevity, detail
from mpo_ray.io import storage
from mpo_ray.workflows.evaluate import evaluate_generations, format_evaluations, read_generations
from mpo_ray.workflows.sweep import grid_points, point_label

OBJECTIVES = {"concise": brevity, "detailed": detail}


def gen_table(responses, ids=None, errors=None):
    return generation_rows(ids or [f"p{i}" for i in range(len(responses))], responses=responses, errors=errors)


def test_win_rates_and_intervals_are_exact():
    np.testing.assert_array_equal(win_rates(np.array([2.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0])), [1.0, 0.5, 0.0])
    m, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    half = 1.959963984540054 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))


def test_evaluate_against_a_reference():
    ref = gen_table(["a b c", "a b c", "a b", "a"])
    # p0 shorter and poorer, p1 same, p2 longer and richer, p3 longer but repeats a word
    ours = gen_table(["a", "x y z", "a b c d", "a a"], ids=["p0", "p1", "p2", "p3"])
    r = evaluate_generations(ours, OBJECTIVES, reference=ref, name="ours")
    c, d = r["objectives"]["concise"], r["objectives"]["detailed"]
    assert c["mean"] == pytest.approx(-(1 + 3 + 4 + 2) / 4)
    assert d["mean"] == pytest.approx((1 + 3 + 4 + 1) / 4)
    assert c["win_rate"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert d["win_rate"] == pytest.approx((0 + 0.5 + 1 + 0.5) / 4)
    assert r["worst_objective"] == "concise" and r["min_win_rate"] == pytest.approx(0.375)
    assert r["paired_with_reference"] == 4
    table = format_evaluations([r])
    assert "| ours |" in table and "**0.38**" in table


def test_reading_generations(tmp_path):
    out = str(tmp_path / "gens")
    storage.write_parquet(os.path.join(out, "part-0.parquet"), gen_table(["a", "b"], errors=[None, "too long"]))
    storage.write_parquet(os.path.join(out, "part-1.parquet"), gen_table(["c"], ids=["p9"]))
    t = read_generations(out)
    assert sorted(t["prompt_id"].to_pylist()) == ["p0", "p9"]  # the error row is not evaluated
    with pytest.raises(ValueError, match="do not exist"):
        read_generations(str(tmp_path / "nope"))
    storage.write_parquet(str(tmp_path / "bad.parquet"), pa.table({"prompt": ["q"], "text": ["a"]}))
    with pytest.raises(
        ValueError, match=r"lack column\(s\) \['prompt_id', 'response'\]; they have \['prompt', 'text'\]"
    ):
        read_generations(str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match="share no prompt_id"):
        evaluate_generations(gen_table(["a"]), OBJECTIVES, reference=gen_table(["a"], ids=["other"]))
    with pytest.raises(ValueError, match="one number per response"):
        evaluate_generations(gen_table(["a", "b"]), {"bad": lambda p, r: [1.0]})


def test_grid_points_label_the_simplex_grid_and_add_the_uniform_mix_once():
    g = grid_points(3, 0.5)
    assert list(g) == ["w=1,0,0", "w=0.5,0.5,0", "w=0.5,0,0.5", "w=0,1,0", "w=0,0.5,0.5", "w=0,0,1", "uniform"]
    assert {tuple(w) for w in g.values()} == {
        (1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5), (1 / 3, 1 / 3, 1 / 3)
    }  # fmt: skip
    assert len(grid_points(3, 0.25)) == 15 + 1 and len(grid_points(2, 0.1)) == 11  # 0.1: the centre is on the grid
    assert "uniform" not in grid_points(3, 1 / 3) and "w=0.333,0.333,0.333" in grid_points(3, 1 / 3)
    assert point_label([0.5, 0.25, 0.25]) == "w=0.5,0.25,0.25"
    # named vectors come first and the grid leaves out their weights (the demo names the vertices and the centre)
    named = {"a": [1.0, 0.0, 0.0], "uniform": [1 / 3] * 3}
    assert list(grid_points(3, 0.5, named=named)) == [
        "a",
        "uniform",
        *[x for x in g if x not in ("w=1,0,0", "uniform")],
    ]
    assert grid_points(3, None, named=named) == named and grid_points(4, None) == {"uniform": [0.25] * 4}
    with pytest.raises(ValueError, match="K = 2 or 3"):
        grid_points(4, 0.5)
    with pytest.raises(ValueError, match="1/n"):
        grid_points(3, 0.3)


def _point(name, weights, rates):
    objs = {
        o: {"mean": 0.0, "ci95": [0, 0], "win_rate": r, "win_rate_ci95": [r - 0.1, r + 0.1]}
        for o, r in zip(("concise", "detailed", "upbeat"), rates)
    }
    return {"name": name, "weights": weights, "objectives": objs, "min_win_rate": min(rates)}


@pytest.mark.parametrize("k", [2, 3])
def test_plots_are_written_as_png(tmp_path, k):
    from mpo_ray.core.solver import solve_weights
    from mpo_ray.demo.plots import plot_front, plot_objectives, plot_solver

    names = ["concise", "detailed", "upbeat"][:k]
    points = [
        _point(f"w{i}", w.tolist(), list(np.linspace(0.2, 0.8, k) + 0.05 * i)[:k])
        for i, w in enumerate(simplex_grid(k, 2))
    ]
    points.append(_point("MPO", [1 / k] * k, [0.5] * k))
    plot_front(str(tmp_path / "front.png"), {"policies": names, "points": points})
    plot_objectives(str(tmp_path / "objectives.png"), points[:3])
    L = np.random.default_rng(0).normal(size=(20, 4, k))
    full, bsmd = solve_weights(L), solve_weights(L, method="bsmd", steps=40, batch_prompts=1)
    plot_solver(str(tmp_path / "solver.png"), names, full, bsmd, (np.array([0, 20, 40]), np.array([1e-1, 1e-2, 1e-3])))
    for name in ("front", "objectives", "solver"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_evaluate_command(tmp_path, capsys):
    from mpo_ray.cli import main

    tiny = TINY_CONFIG
    storage.write_parquet(str(tmp_path / "ours.parquet"), gen_table(["a b c!", "great fun"]))
    storage.write_parquet(str(tmp_path / "ref.parquet"), gen_table(["a", "b"]))
    argv = [
        "evaluate",
        tiny,
        str(tmp_path / "ours.parquet"),
        "--reference",
        str(tmp_path / "ref.parquet"),
        "--output",
        str(tmp_path / "results.json"),
    ]
    assert main(argv) == 0
    assert "min win rate" in capsys.readouterr().out
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["format"] == "mpo-ray/evaluation"  # how a rerun knows the file as evaluate's own
    [r] = written["results"]
    assert r["objectives"]["concise"]["win_rate"] == 0.0 and r["objectives"]["upbeat"]["win_rate"] == 1.0
    assert r["min_win_rate"] == 0.0 and r["worst_objective"] == "concise"
    assert main(["evaluate", tiny, str(tmp_path / "missing")]) == 2
    assert "do not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_command_on_tiny_models(tmp_path, capsys):
    from mpo_ray.cli import main
    from mpo_ray.config import load_config
    from mpo_ray.core.seeds import derive_seed
    from mpo_ray.io.artifact import WeightsRecord
    from mpo_ray.io.corpus import read_prompts
    from mpo_ray.io.store import WeightsStore
    from mpo_ray.models.decoding import MixedPolicy
    from mpo_ray.models.policies import load_policies
    from mpo_ray.runtime.session import ray_session

    tiny = TINY_CONFIG
    store = WeightsStore(str(tmp_path / "store"))  # the MPO point comes from a nightly store's `latest`
    store.write_version(
        "n1",
        WeightsRecord.build(
            version="n1", policies=["upbeat", "concise", "detailed"], weights=[0.2, 0.5, 0.3], beta=0.1
        ),
    )
    store.promote("n1", expected=None)
    out = tmp_path / "sweep"
    with ray_session(address="local", num_cpus=2, log_to_driver=False):
        assert (
            main(
                [
                    "sweep",
                    tiny,
                    "--step",
                    "0.5",
                    "--max-prompts",
                    "4",
                    "--output",
                    str(out),
                    "--quiet",
                    "--weights",
                    store.uri,
                    "--soup",
                ]
            )
            == 0
        )
    summary = json.loads((out / "sweep.json").read_text())
    names = [p["name"] for p in summary["points"]]
    # π_ref + the 6 grid points of step 1/2 on 3 policies + the uniform mix + MPO + the soups (uniform, at MPO's λ)
    assert names[0] == "reference" and len(names) == 11 and names[-2:] == ["soup", "soup_mpo"]
    assert json.loads((out / "soups" / "soup_mpo" / "soup.json").read_text())["weights"] == [0.5, 0.3, 0.2]
    mpo = next(p for p in summary["points"] if p["name"] == "MPO")
    assert mpo["weights"] == [0.5, 0.3, 0.2]  # matched by name, in the config's policy order
    assert all("min_win_rate" in p for p in summary["points"])
    # every point is scored by every model, so it is measured on MPO's own objective too
    assert all(np.isfinite(p["implicit"]["implicit_min"]) and p["implicit"]["prompts"] == 4 for p in summary["points"])
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    # a vertex equals that policy alone with the generate workflow's per-prompt seeds
    config = load_config(tiny)
    ids, prompts = read_prompts(config.generate.prompts, limit=4)
    g = config.generate
    gens = MixedPolicy(load_policies([config.policies[0]]), [1.0]).generate(
        prompts,
        seed=[derive_seed(g.seed, i) for i in ids],
        **g.params(),
        stop=g.stop,
    )
    vertex = pq.read_table(out / "w=1,0,0.parquet")
    assert {"sample_logprob", "logp_ref", "logp_concise", "logp_detailed", "logp_upbeat"} <= set(vertex.column_names)
    assert vertex["response"].to_pylist() == [x.text for x in gens]


def test_sweep_points_take_the_mpo_weights_from_a_store_or_a_file(tmp_path):
    from mpo_ray.config import load_config
    from mpo_ray.io.artifact import WeightsRecord
    from mpo_ray.io.store import WeightsStore
    from mpo_ray.workflows.sweep import sweep_points

    tiny = TINY_CONFIG
    config = load_config(tiny)
    store = WeightsStore(str(tmp_path / "store"))
    store.write_version(
        "n1",
        WeightsRecord.build(
            version="n1", policies=["detailed", "upbeat", "concise"], weights=[0.1, 0.3, 0.6], beta=0.1
        ),
    )
    with pytest.raises(ValueError, match="no `latest` yet"):
        sweep_points(config, 0.5, store.uri)
    store.promote("n1", expected=None)
    assert sweep_points(config, 0.5, store.uri)["MPO"] == [0.6, 0.1, 0.3]
    assert sweep_points(config, 0.5, store.version_uri("n1"))["MPO"] == [0.6, 0.1, 0.3]
    WeightsRecord.build(version="v", policies=["a", "b"], weights=[1, 0], beta=0.1).write(str(tmp_path / "w.json"))
    with pytest.raises(ValueError, match=r"is for policies \['a', 'b'\]"):
        sweep_points(config, 0.5, str(tmp_path / "w.json"))


def test_win_rate_intervals_do_not_claim_certainty_from_a_few_prompts():
    rate, lo, hi = wilson([1.0] * 8)  # 8 wins of 8: the normal approximation said [1.0, 1.0]
    assert rate == 1.0 and hi == 1.0 and lo == pytest.approx(0.6756, abs=1e-3)
    rate, lo, hi = wilson([0.0] * 8)
    assert rate == 0.0 and lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-3)
    rate, lo, hi = wilson([1.0, 0.0, 0.5, 0.5])  # ties count half
    assert rate == 0.5 and lo < 0.5 < hi


def test_paired_bootstrap_keeps_the_pairing_of_prompts():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(40, 3)).astype(float)
    same = paired_bootstrap(lambda x, y: min_mean(x) - min_mean(y), a, a.copy(), resamples=500)
    assert same == (0.0, 0.0, 0.0)  # identical sets: every resample differs by exactly 0
    better = np.minimum(a + 1, 1.0)
    diff, lo, hi = paired_bootstrap(lambda x, y: min_mean(x) - min_mean(y), better, a, resamples=500, seed=3)
    assert diff > 0 and lo <= diff <= hi and lo >= 0


def test_comparing_two_sets_says_within_noise_when_the_interval_holds_zero():
    from mpo_ray.workflows.evaluate import compare_min_win_rates

    ids = [f"p{i}" for i in range(12)]
    a = {"name": "MPO", "wins": {"prompt_ids": ids, "x": [1.0, 0.0] * 6, "y": [0.5] * 12}}
    b = {"name": "uniform", "wins": {"prompt_ids": ids[::-1], "x": [0.0, 1.0] * 6, "y": [0.5] * 12}}
    c = compare_min_win_rates(a, b)  # paired by id: b's rows are in another order
    assert c["minus"] == "uniform" and c["prompts"] == 12 and c["within_noise"] and c["ci95"][0] <= 0 <= c["ci95"][1]
