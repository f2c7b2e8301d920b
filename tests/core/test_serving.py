"""What the decoder serves, checked against exact answers in an enumerable world (issue 19).

The token-level mixture at λ is not π_λ; resampling one of n token-level candidates ∝ π_λ/q moves towards it.
Every distribution here is exact (the resampling one by quadrature, checked against enumeration of all
n-tuples of candidates), so each assertion is deterministic and the module runs in seconds.
"""

import itertools

import numpy as np
import pytest

from mpo_ray.testing.enumerable import make_world
from mpo_ray.testing.resampling import resampling_logp
from mpo_ray.testing.token_weights import equalised_token_weights, tuned_token_weights

LAM = np.array([0.2, 0.3, 0.5])


@pytest.fixture(scope="module")
def tiny():
    """3 prompts, 3 tokens, responses ≤ 3 tokens (15 per prompt): small enough to enumerate 15³ candidate triples."""
    return make_world(3, 3, scale=2.0, vocab_size=3, max_len=3, seed=1)


@pytest.fixture(scope="module")
def world():
    """Policies far from π_ref (scale 2.5), where the token-level mixture visibly misses π_λ."""
    return make_world(16, 3, scale=2.5, correlation=[[1, 0.8, 0.5], [0.8, 1, 0.5], [0.5, 0.5, 1]], seed=4)


def brute_force_resampling(q: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """(N, S) output of 'draw n candidates i.i.d. from q, keep one ∝ target/q', by summing over all S^n tuples."""
    N, S = q.shape
    tuples = np.array(list(itertools.product(range(S), repeat=n)))  # (S^n, n)
    out = np.zeros((N, S))
    for i in range(N):
        w = target[i] / q[i]
        prob = q[i][tuples].prod(axis=1)  # probability of the tuple
        share = w[tuples] / w[tuples].sum(axis=1, keepdims=True)  # chance each position is picked
        np.add.at(out[i], tuples.ravel(), (prob[:, None] * share).ravel())
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_quadrature_equals_enumeration_of_every_candidate_tuple(tiny, n):
    q, target = np.exp(tiny.geometric_token_logp(LAM)), np.exp(tiny.target_logp(LAM))
    exact = brute_force_resampling(q, target, n)
    got = np.exp(tiny.resampled_logp(LAM, n))
    np.testing.assert_allclose(got, exact, rtol=1e-10, atol=0)
    # unnormalised log-probs give the same answer: only the ratio target/q matters
    np.testing.assert_allclose(np.exp(resampling_logp(np.log(target) - 3.0, np.log(q) + 1.0, n)), exact, rtol=1e-10)


def test_one_candidate_serves_the_token_level_mixture(world):
    np.testing.assert_allclose(world.resampled_logp(LAM, 1), world.geometric_token_logp(LAM), atol=1e-11)
    np.testing.assert_array_equal(world.served_logp(LAM, 1), world.geometric_token_logp(LAM))


def test_more_candidates_approach_pi_lambda_monotonically(world):
    lam = world.exact.weights
    ns = [1, 2, 4, 8, 16, 64, 256]
    served = world.resampled_logp(lam, ns)
    np.testing.assert_allclose(np.exp(served).sum(axis=-1), 1.0, atol=1e-10)
    target = np.exp(world.target_logp(lam))
    tv = [0.5 * np.abs(np.exp(p) - target).sum(axis=1).mean() for p in served]
    gap = [world.exact.dual - world.objective(p) for p in served]
    assert all(a > b for a, b in zip(tv, tv[1:])), tv
    assert all(a > b for a, b in zip(gap, gap[1:])), gap
    assert gap[0] > 0.05 and gap[-1] < 0.01 * gap[0]  # token level visibly short; n = 256 nearly closes it
    assert tv[-1] < 0.01


def test_j_of_pi_lambda_star_is_f_of_lambda_star_and_every_served_mode_is_below(world):
    lam = world.exact.weights
    f = world.exact.dual
    assert world.objective(world.target_logp(lam)) == pytest.approx(f, abs=1e-9)  # strong duality
    K = world.num_policies
    tables = [
        world.geometric_token_logp(lam),
        world.geometric_token_logp(np.full(K, 1 / K)),
        world.ref_logp,
        *world.resampled_logp(lam, [2, 8]),
        *(world.policy_logp[..., k] for k in range(K)),
    ]
    for t in tables:
        assert world.objective(t) <= f + 1e-9
    # J's pieces: the values are E_π[ℓ_k], the KL that of π to π_ref; π_ref itself has KL 0
    assert world.served_kl(world.ref_logp) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(world.served_values(world.target_logp(lam)), world.values(lam), atol=1e-12)


def test_tuned_token_weights_beat_the_token_level_mixture_at_lambda_star(world):
    lam_star = world.exact.weights
    at_star = world.objective(world.geometric_token_logp(lam_star))
    lam, j = tuned_token_weights(world, tol=1e-3)
    assert lam.min() >= 0 and lam.sum() == pytest.approx(1.0)
    assert j == pytest.approx(world.objective(world.geometric_token_logp(lam)))
    assert at_star <= j <= world.exact.dual
    # the rounds' limit equalises the served values on its support
    eq = equalised_token_weights(world)
    v = world.served_values(world.geometric_token_logp(eq))
    assert np.ptp(v[eq > 1e-6]) < 1e-5 and v[eq > 1e-6].max() <= v.min() + 1e-5
    assert j >= world.objective(world.geometric_token_logp(eq)) - 1e-12


def test_token_sampler_and_resampling_sampler_draw_the_exact_distributions(tiny):
    rng = np.random.default_rng(0)
    B = 20000
    T = 3
    for n in (1, 3):
        got = tiny.sample_served(LAM, n, rng.random((tiny.num_prompts, B, n, T)), rng.random((tiny.num_prompts, B)))
        exact = np.exp(tiny.served_logp(LAM, n))
        freq = np.stack([np.bincount(r, minlength=tiny.num_sequences) for r in got]) / B
        # each frequency within 5 standard errors of its exact probability
        se = np.sqrt(exact * (1 - exact) / B)
        assert (np.abs(freq - exact) <= 5 * se + 1e-12).all(), n
    # a vertex serves that policy exactly, token by token, whatever n is
    vertex = np.eye(3)[1]
    np.testing.assert_allclose(tiny.served_logp(vertex, 4), tiny.policy_logp[..., 1], atol=1e-10)


def test_shared_uniforms_couple_sets_like_the_demos_shared_seeds(tiny):
    """The same uniforms give the same response whenever two mixtures agree on the steps taken."""
    u = np.random.default_rng(1).random((tiny.num_prompts, 50, 1, 3))
    a = tiny.sample_served(LAM, 1, u)
    b = tiny.sample_served(LAM, 1, u)
    c = tiny.sample_served(np.array([0.25, 0.25, 0.5]), 1, u)
    np.testing.assert_array_equal(a, b)
    assert (a == c).mean() > 0.5  # nearby weights, mostly the same draw


# --- the benchmarks' helpers (bench serving, bench protocol), on tiny sizes ---------------------------------------


def test_smallest_candidates_is_the_first_n_within_the_target(world):
    from mpo_ray.benchmarks.serving import smallest_candidates

    lam, f = world.exact.weights, world.exact.dual
    gap = lambda n: f - world.objective(world.served_logp(lam, n))  # noqa: E731
    target = 0.5 * gap(2)
    n = smallest_candidates(world, lam, target)
    assert n is not None and n > 2 and gap(n) <= target < gap(n - 1)
    assert smallest_candidates(world, lam, 10.0) == 1
    assert smallest_candidates(world, lam, 1e-9, n_max=8) is None


def test_paired_intervals_equal_core_paired_difference():
    from mpo_ray.benchmarks.protocol import bootstrap_indices, paired_j_intervals, resample_weights
    from mpo_ray.core.stats import paired_difference
    from mpo_ray.core.yardstick import implicit_min

    rng = np.random.default_rng(3)
    E, K = 17, 3
    sets = [(rng.normal(size=(E, K)) + 0.3 * j, rng.normal(size=E)) for j in range(3)]
    ids = [f"p{i:03d}" for i in range(E)]  # sorted as core sorts them
    got = paired_j_intervals(sets, [1, 2], resample_weights(bootstrap_indices(E, 2000, seed=7)))
    for j, (d, lo, hi) in zip([1, 2], got):
        ref = paired_difference(implicit_min, (ids, *sets[0]), (ids, *sets[j]), seed=7)
        assert d == pytest.approx(ref["difference"], abs=1e-12)
        assert [lo, hi] == pytest.approx(ref["ci95"], abs=1e-12)


@pytest.fixture(scope="module")
def setup():
    from mpo_ray.benchmarks.protocol import make_setup

    return make_setup(
        make_world(60, 3, scale=2.0, correlation=[[1, 0.8, 0.5], [0.8, 1, 0.5], [0.5, 0.5, 1]], seed=2), candidates=2
    )


def test_win_rate_of_pi_ref_against_itself_is_one_half(setup):
    from mpo_ray.benchmarks.protocol import exact_min_win_rate

    assert exact_min_win_rate(setup, setup.world.ref_logp) == pytest.approx(0.5, abs=1e-12)
    assert setup.truth["uniform"] <= setup.truth["f"] and setup.truth["mpo_star"] <= setup.truth["f"]


def test_protocol_replica_is_deterministic_and_consistent_with_truth(setup):
    from mpo_ray.benchmarks.protocol import replica, report

    kw = dict(reweight=((8, 4), (16, 2)), evals=((10, 1), (20, 2)), resamples=20, test_resamples=200)
    a, b = replica(setup, 0, **kw), replica(setup, 0, **kw)
    assert a[8, 4][10, 1] == b[8, 4][10, 1] and a[16, 2]["j_true"] == b[16, 2]["j_true"]
    for cell in a.values():
        assert cell["j_true"] <= setup.truth["f"] + 1e-9
        assert cell["dj_uniform"] == pytest.approx(cell["j_true"] - setup.truth["uniform"])
        assert cell["covered"].shape == (3,) and 0 <= cell["win_true"] <= 1
        for E, s in ((10, 1), (20, 2)):
            c = cell[E, s]
            assert c["ci"][0] <= c["ci"][1] and 0 <= c["win_coupled"] <= 1
    text = report(setup, [a, replica(setup, 1, **kw)], reweight=kw["reweight"], evals=kw["evals"], resamples=20)
    assert "coverage" in text and "power" in text


def test_serving_benchmark_prints_every_mode(capsys):
    from mpo_ray.benchmarks.serving import main

    main(["--prompts", "40", "--worlds", "easy", "--seeds", "2", "--reweight-prompts", "12"])
    out = capsys.readouterr().out
    for mode in ("token-level at λ*", "resample n=16 at λ*", "token-level at tuned λ", "π_ref", "smallest n within"):
        assert mode in out
