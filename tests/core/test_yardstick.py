"""MPO's own yardstick J(π) = min_k E_π[ℓ_k] − KL(π‖π_ref), checked in an exactly enumerable world.

The world's F, λ* and every policy's probabilities are exact sums, so J of any policy is known exactly:
J(π_λ*) equals F(λ*) (strong duality) and no other policy does better; the sample estimator must find
the exact values inside its intervals.
"""

import numpy as np
import pytest

from mpo_ray.core.stats import paired_difference
from mpo_ray.core.yardstick import compare_implicit, implicit_min, implicit_objective, implicit_terms
from mpo_ray.testing.enumerable import make_world


@pytest.fixture(scope="module")
def world():
    return make_world(12, 3, scale=1.2, correlation=[[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], seed=5)


def exact_j(world, logp) -> float:
    """J of the policy whose (N, S) log-probs are `logp`, by exact sums over every response."""
    p = np.exp(logp)
    values = np.einsum("is,isk->k", p, world.log_ratios) / world.num_prompts
    kl = float((p * (logp - world.ref_logp)).sum(axis=1).mean())
    return float(values.min() - kl)


def policies(world) -> dict[str, np.ndarray]:
    """Every policy the demo compares, as exact (N, S) log-prob tables."""
    k = world.num_policies
    out = {
        "reference": world.ref_logp,
        "uniform": world.target_logp(np.full(k, 1 / k)),
        "uniform (token level)": world.geometric_token_logp(np.full(k, 1 / k)),
        "arithmetic mix": world.mixture_logp(np.full(k + 1, 1 / (k + 1))),
    }
    out.update({f"policy {i}": world.policy_logp[..., i] for i in range(k)})
    rng = np.random.default_rng(0)
    out.update({f"random λ {j}": world.target_logp(rng.dirichlet(np.ones(k))) for j in range(5)})
    return out


def samples(world, logp, n, seed):
    """n samples per prompt from `logp`, as the columns a generation table carries."""
    idx = world.sample(logp, n, np.random.default_rng(seed))
    rows = np.arange(world.num_prompts)[:, None].repeat(n, axis=1)
    return (
        [f"p{i}" for i in rows.ravel()],
        logp[rows, idx].ravel(),
        world.ref_logp[rows, idx].ravel(),
        world.policy_logp[rows, idx].reshape(-1, world.num_policies),
    )


def test_the_mpo_policy_attains_the_dual_optimum_and_nothing_beats_it(world):
    lam = world.exact.weights
    j_star = exact_j(world, world.target_logp(lam))
    assert j_star == pytest.approx(world.exact.dual, abs=1e-9)  # J(π_λ*) = min F: strong duality
    for name, logp in policies(world).items():
        assert exact_j(world, logp) <= j_star + 1e-9, name
    # and the optimum is strict: the uniform mix is worse here by a visible margin
    assert exact_j(world, world.target_logp(np.full(3, 1 / 3))) < j_star - 1e-3


@pytest.mark.parametrize("name", ["reference", "policy 0", "uniform", "uniform (token level)", "arithmetic mix"])
def test_the_sample_estimate_finds_the_exact_value_inside_its_interval(world, name):
    logp = policies(world)[name]
    r = implicit_objective(*samples(world, logp, 400, seed=1), ["a", "b", "c"], seed=0)
    lo, hi = r["implicit_min_ci95"]
    assert lo <= exact_j(world, logp) <= hi
    assert abs(r["implicit_min"] - exact_j(world, logp)) < 0.1
    assert r["prompts"] == world.num_prompts and set(r["values"]) == {"a", "b", "c"}
    kl = float((np.exp(logp) * (logp - world.ref_logp)).sum(axis=1).mean())
    assert r["kl_ci95"][0] <= kl <= r["kl_ci95"][1]


def test_terms_average_each_prompts_samples_first():
    ids, ell, kl = implicit_terms(
        ["b", "a", "b"], [-1.0, -2.0, -3.0], [-1.5, -2.0, -2.0], [[-1.0, 0.0], [-2.0, -1.0], [-2.0, -3.0]]
    )
    assert ids == ["a", "b"]
    np.testing.assert_allclose(ell, [[0.0, 1.0], [0.25, 0.25]])  # b: ([0.5, 1.5] + [0, -1]) / 2
    np.testing.assert_allclose(kl, [0.0, -0.25])  # b: (0.5 + -1) / 2
    assert implicit_min(ell, kl) == pytest.approx(0.125 + 0.125)  # min(0.125, 0.625) − (−0.125)
    with pytest.raises(ValueError, match="finite"):
        implicit_terms(["a"], [float("nan")], [0.0], [[0.0]])


def test_comparing_mpo_with_the_uniform_mix_on_samples(world):
    lam = world.exact.weights
    mpo = implicit_objective(*samples(world, world.target_logp(lam), 300, seed=2), ["a", "b", "c"])
    uni = implicit_objective(*samples(world, world.target_logp(np.full(3, 1 / 3)), 300, seed=3), ["a", "b", "c"])
    c = compare_implicit(mpo, uni)
    truth = exact_j(world, world.target_logp(lam)) - exact_j(world, world.target_logp(np.full(3, 1 / 3)))
    assert c["ci95"][0] <= truth <= c["ci95"][1] and c["prompts"] == world.num_prompts
    assert c["within_noise"] == (c["ci95"][0] <= 0 <= c["ci95"][1])
    same = compare_implicit(mpo, mpo)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["within_noise"]


def test_paired_difference_pairs_by_prompt_id_not_by_position():
    a = (["x", "y", "z"], [1.0, 2.0, 3.0])
    b = (["z", "x", "w"], [3.0, 1.0, 9.0])  # same values on the shared prompts, in another order
    d = paired_difference(np.mean, a, b)
    assert d["difference"] == 0 and d["ci95"] == [0.0, 0.0] and d["prompts"] == 2
    with pytest.raises(ValueError, match="share no prompt"):
        paired_difference(np.mean, (["x"], [1.0]), (["y"], [1.0]))


def test_generated_rows_carry_their_own_and_every_models_logprob(tmp_path):
    """Untempered: a vertex's sampling log-prob is that model's teacher-forced score of the same tokens, so the
    set's KL to itself is 0 up to float32; error rows carry nulls; resampled rows have no sampling log-prob but
    π_λ's estimated one."""
    from mpo_ray.models.generator import BatchGenerator
    from mpo_ray.testing import build_tiny_family
    from mpo_ray.workflows.evaluate import has_logprobs

    specs = build_tiny_family(tmp_path / "tiny", 2, kind="lora")
    names = [s.name for s in specs]
    generator = BatchGenerator(specs, threads=1)
    params = {"max_new_tokens": 6, "temperature": 1.0, "top_k": None, "top_p": None, "stop": [], "num_candidates": 1}
    prompts, ids = ["hello there", "How do I bake bread?", "x", "word " * 2000], ["a", "b", "c", "d"]  # d: too long
    for k, name in enumerate(names):
        weights = [0.0] * len(names)
        weights[k] = 1.0
        rows = generator.rows(ids, prompts, [1, 2, 3, 4], weights, params, "v", score=tuple(names))
        assert rows["error"].to_pylist()[3] and rows["sample_logprob"].to_pylist()[3] is None
        assert all(rows[f"logp_{n}"].to_pylist()[3] is None for n in names)
        ok = rows.slice(0, 3)
        np.testing.assert_allclose(ok["sample_logprob"].to_numpy(), ok[f"logp_{name}"].to_numpy(), atol=1e-3)
        assert has_logprobs(ok, names[0], names[1:]) and not has_logprobs(rows, names[0], names[1:])
    mixed = generator.rows(ids[:3], prompts[:3], [1, 2, 3], [0.5, 0.5], params, "v", score=tuple(names))
    assert np.all(mixed["sample_logprob"].to_numpy() < 0)
    plain = generator.rows(ids[:3], prompts[:3], [1, 2, 3], [0.5, 0.5], params, "v")  # generate's default: no scoring
    assert not any(c.startswith("logp_") for c in plain.column_names)
    assert plain["response"].to_pylist() == mixed["response"].to_pylist()
    with pytest.raises(ValueError, match="cannot score with"):
        generator.rows(ids[:1], prompts[:1], [1], [0.5, 0.5], params, "v", score=("nobody",))
    resampled = generator.rows(
        ids[:3], prompts[:3], [1, 2, 3], [0.5, 0.5], {**params, "num_candidates": 2}, "v", score=tuple(names)
    )
    assert resampled["sample_logprob"].null_count == 3 and resampled["target_logprob"].null_count == 0
    # target_logprob = log π̃_λ(y) − log Ẑ(x), and log π̃_λ(y) = Σ_k λ_k log π_k(y) is what teacher forcing gives
    lam_logp = 0.5 * resampled[f"logp_{names[0]}"].to_numpy() + 0.5 * resampled[f"logp_{names[1]}"].to_numpy()
    np.testing.assert_allclose(
        resampled["target_logprob"].to_numpy() + resampled["log_partition"].to_numpy(), lam_logp, atol=2e-3
    )
    assert has_logprobs(resampled, names[0], names[1:])
    assert mixed["log_partition"].null_count == 3 and mixed["target_logprob"].null_count == 3
