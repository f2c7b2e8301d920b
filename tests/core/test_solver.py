"""The solver against exact answers on small tabular problems.

A tabular problem has a handful of prompts, a small response space and
π_k = π_ref · exp(r_k/β) / Z_k, so F, λ*, the values and the MaxMin objective
of π_λ can all be enumerated. Enumeration is fed to the solver as a table that
lists every response once with importance weight π_ref(y|x), which makes F̂
equal F exactly.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from mpo_ray import normalize_rewards, solve_weights
from mpo_ray.core.solver import evaluate_weights


def logsumexp(a, axis):
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


class Tabular:
    """X prompts × Y responses, K objectives with π_k ∝ π_ref · exp(r_k / β)."""

    def __init__(self, X=3, Y=6, K=3, beta=0.5, seed=0, rewards=None):
        rng = np.random.default_rng(seed)
        self.log_ref = np.log(rng.dirichlet(np.ones(Y), size=X))  # (X, Y)
        self.rewards = rng.normal(size=(X, Y, K)) if rewards is None else rewards
        self.beta = beta
        scaled = self.rewards / beta
        self.log_ratios = scaled - logsumexp(self.log_ref[..., None] + scaled, axis=1)[:, None, :]

    # exact quantities -----------------------------------------------------
    def F(self, lam):
        return float(logsumexp(self.log_ref + self.log_ratios @ lam, axis=1).mean())

    def mixture(self, lam):
        a = self.log_ref + self.log_ratios @ lam
        return np.exp(a - logsumexp(a, axis=1)[:, None])  # π_λ(y|x)

    def values(self, lam):
        return np.einsum("xy,xyk->k", self.mixture(lam), self.log_ratios) / self.log_ref.shape[0]

    def maxmin_objective(self, lam):
        """min_k E_x E_{π_λ} ℓ_k − E_x KL(π_λ ‖ π_ref), summed out explicitly."""
        p = self.mixture(lam)
        kl = np.sum(p * (np.log(p) - self.log_ref), axis=1).mean()
        return float(self.values(lam).min() - kl)

    def exact_table(self):
        """Every response once, weighted by π_ref: the solver's F̂ is then F."""
        return dict(log_ratios=self.log_ratios, log_importance=self.log_ref)

    def sample(self, m, seed):
        rng = np.random.default_rng(seed)
        X, Y = self.log_ref.shape
        ys = np.stack([rng.choice(Y, size=m, p=np.exp(self.log_ref[x])) for x in range(X)])
        return self.log_ratios[np.arange(X)[:, None], ys]  # (X, m, K)


def brute_force_argmin(f, K, resolution):
    """Minimise f over a simplex grid, then refine locally: an independent λ*."""
    best, best_val = None, np.inf
    for c in itertools.product(range(resolution + 1), repeat=K - 1):
        if sum(c) <= resolution:
            lam = np.array([*c, resolution - sum(c)], dtype=float) / resolution
            val = f(lam)
            if val < best_val:
                best, best_val = lam, val
    step = 1.0 / resolution
    for _ in range(60):  # coordinate-pair pattern search on the simplex
        improved = False
        for a, b in itertools.permutations(range(K), 2):
            cand = best.copy()
            move = min(step, cand[b])
            cand[a] += move
            cand[b] -= move
            if move > 0 and f(cand) < best_val - 1e-15:
                best, best_val, improved = cand, f(cand), True
        if not improved:
            step /= 2
    return best


# --------------------------------------------------------------------------- #
# Exactness
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_solve_matches_enumerated_optimum(K, seed):
    problem = Tabular(K=K, seed=seed)
    result = solve_weights(**problem.exact_table())
    lam_star = brute_force_argmin(problem.F, K, resolution=40)
    assert result.converged and result.gap <= 1e-9
    np.testing.assert_allclose(result.weights, lam_star, atol=2e-4)
    assert result.dual == pytest.approx(problem.F(result.weights), abs=1e-12)
    np.testing.assert_allclose(result.values, problem.values(result.weights), atol=1e-12)
    assert result.dual <= problem.F(lam_star) + 1e-12


def test_certificate_nonnegative_everywhere_and_maxmin_value_is_attained():
    problem = Tabular(K=3, seed=4)
    rng = np.random.default_rng(0)
    for lam in [*rng.dirichlet(np.ones(3), size=50), np.eye(3)[0], np.eye(3)[2]]:
        r = evaluate_weights(problem.log_ratios, lam, log_importance=problem.log_ref)
        assert r.gap >= 0.0
        # F̂ − gap is exactly the MaxMin objective of π_λ, by enumeration.
        assert r.maxmin_value == pytest.approx(problem.maxmin_objective(lam), abs=1e-12)
    # At the optimum, strong duality: the attained MaxMin value equals F(λ*), and beats every other π_λ.
    opt = solve_weights(**problem.exact_table())
    assert opt.maxmin_value == pytest.approx(problem.F(opt.weights), abs=1e-9)
    others = [problem.maxmin_objective(lam) for lam in rng.dirichlet(np.ones(3), size=200)]
    assert opt.maxmin_value >= max(others) - 1e-12


def test_sampled_solver_converges_to_lambda_star_as_m_grows():
    problem = Tabular(X=4, Y=8, K=3, seed=7)
    lam_star = solve_weights(**problem.exact_table()).weights
    errors = []
    for m in [10, 100, 1_000, 10_000, 100_000]:
        # average over a few independent draws so the trend is not one lucky seed
        errs = [np.abs(solve_weights(problem.sample(m, seed=s)).weights - lam_star).sum() for s in range(4)]
        errors.append(float(np.mean(errs)))
    assert errors[-1] < 0.01
    assert errors[-1] < errors[0] / 10
    assert all(b < a * 1.2 for a, b in zip(errors, errors[1:])), errors


def test_free_rider_gets_zero_weight():
    base = Tabular(K=2, seed=3)
    # Objective 3 is served whenever 1 and 2 are: its log-ratio is their mean plus a constant.
    L = base.log_ratios
    L3 = np.concatenate([L, 0.5 * (L[..., :1] + L[..., 1:2]) + 1.0], axis=-1)
    result = solve_weights(L3, log_importance=base.log_ref)
    assert result.weights[2] == 0.0
    assert result.free_riders == (2,)
    assert result.values[2] > result.values.min()
    two = solve_weights(L, log_importance=base.log_ref)
    np.testing.assert_allclose(result.weights[:2], two.weights, atol=1e-7)


def test_dominated_objective_takes_all_weight():
    # Objective 0 is the hardest to serve everywhere: the mixture is π_0 alone.
    rng = np.random.default_rng(0)
    L = rng.normal(size=(50, 8, 3))
    L[..., 1:] += 5.0
    result = solve_weights(L)
    np.testing.assert_allclose(result.weights, [1.0, 0.0, 0.0], atol=1e-12)
    assert result.gap <= 1e-9


def test_single_objective_returns_one():
    L = np.random.default_rng(0).normal(size=(5, 4, 1))
    for method in ["full", "bsmd"]:
        result = solve_weights(L, method=method)
        assert result.weights.tolist() == [1.0]
        assert result.gap == 0.0


def test_identical_objectives_any_weights_are_optimal():
    L = np.repeat(np.random.default_rng(0).normal(size=(20, 6, 1)), 3, axis=-1)
    result = solve_weights(L)
    assert result.converged and result.gap <= 1e-12


def test_warm_start_takes_fewer_iterations():
    problem = Tabular(X=5, Y=10, K=4, seed=11)
    cold = solve_weights(**problem.exact_table())
    warm = solve_weights(**problem.exact_table(), init=cold.weights)
    assert warm.converged and warm.iterations < cold.iterations
    np.testing.assert_allclose(warm.weights, cold.weights, atol=1e-6)


def test_mask_equals_dropping_samples():
    rng = np.random.default_rng(5)
    L = rng.normal(size=(6, 5, 3))
    mask = rng.random((6, 5)) > 0.3
    mask[:, 0] = True
    L_nan = np.where(mask[..., None], L, np.nan)  # masked slots may hold anything
    masked = solve_weights(L_nan, mask=mask)

    # Reference: the same problem written out with importance weights −inf... via explicit ragged sums.
    def F(lam):
        return np.mean([logsumexp(L[i][mask[i]] @ lam, axis=0) - np.log(mask[i].sum()) for i in range(6)])

    lam_star = brute_force_argmin(F, 3, resolution=40)
    np.testing.assert_allclose(masked.weights, lam_star, atol=2e-4)
    assert masked.ess.max() <= mask.sum(axis=1).max() + 1e-9


def test_log_importance_corrects_for_proposal():
    problem = Tabular(X=3, Y=6, K=2, seed=9)
    rng = np.random.default_rng(1)
    # Sample from a flattened proposal q and correct with log π_ref − log q.
    log_q = np.log(np.full_like(problem.log_ref, 1.0 / problem.log_ref.shape[1]))
    m = 20_000
    ys = rng.integers(0, problem.log_ref.shape[1], size=(3, m))
    L = problem.log_ratios[np.arange(3)[:, None], ys]
    log_imp = (problem.log_ref - log_q)[np.arange(3)[:, None], ys]
    lam_star = solve_weights(**problem.exact_table()).weights
    corrected = solve_weights(L, log_importance=log_imp).weights
    uncorrected = solve_weights(L).weights
    assert np.abs(corrected - lam_star).sum() < 0.02
    assert np.abs(corrected - lam_star).sum() < np.abs(uncorrected - lam_star).sum()


def test_ess_is_m_for_uniform_weights_and_smaller_otherwise():
    L = np.zeros((4, 8, 2))
    assert np.allclose(solve_weights(L).ess, 8.0)
    L[0, 0, :] = 50.0
    r = evaluate_weights(L, [0.5, 0.5])
    assert r.ess[0] == pytest.approx(1.0, abs=1e-6) and np.allclose(r.ess[1:], 8.0)


# --------------------------------------------------------------------------- #
# BSMD
# --------------------------------------------------------------------------- #


def test_bsmd_error_shrinks_like_one_over_sqrt_T():
    rng = np.random.default_rng(0)
    L = rng.normal(size=(400, 8, 3)) * 1.5 + np.array([0.4, -0.3, 0.0])
    full = solve_weights(L)
    Ts = [16, 64, 256, 1024, 4096]
    subopt = []
    for T in Ts:
        vals = [solve_weights(L, method="bsmd", steps=T, batch_prompts=1, seed=s).dual - full.dual for s in range(8)]
        subopt.append(np.mean(vals))
    subopt = np.array(subopt)
    assert np.all(subopt >= -1e-12)
    slope = np.polyfit(np.log(Ts), np.log(subopt), 1)[0]
    assert slope < -0.4, (slope, subopt)  # at least the O(1/√T) rate
    assert subopt[-1] < subopt[0] / 8


def test_bsmd_is_deterministic_per_seed_and_returns_average_iterate():
    L = np.random.default_rng(2).normal(size=(30, 4, 3))
    a = solve_weights(L, method="bsmd", steps=50, batch_prompts=3, seed=7)
    b = solve_weights(L, method="bsmd", steps=50, batch_prompts=3, seed=7)
    c = solve_weights(L, method="bsmd", steps=50, batch_prompts=3, seed=8)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert not np.array_equal(a.weights, c.weights)
    assert a.history.weights.shape == (50, 3) and a.history.gap.shape == (50,)
    np.testing.assert_allclose(a.weights, a.history.weights.mean(axis=0))
    assert a.iterations == 50


def test_full_history_traces_gap_to_convergence():
    r = solve_weights(Tabular(K=3, seed=0).log_ratios)
    assert r.history.weights.shape == (r.iterations + 1, 3)
    assert r.history.gap[-1] == pytest.approx(r.gap, abs=1e-12)
    assert r.history.gap[0] > r.history.gap[-1]


# --------------------------------------------------------------------------- #
# Numerics
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["full", "bsmd"])
def test_thousand_nat_log_ratios_stay_finite(method):
    rng = np.random.default_rng(0)
    L = rng.uniform(-1000, 1000, size=(40, 6, 3))
    r = solve_weights(L, method=method, steps=200 if method == "bsmd" else None)
    for x in (r.weights, r.values, r.ess, r.gap, r.dual, r.maxmin_value):
        assert np.all(np.isfinite(x))
    assert r.gap >= 0
    if method == "full":
        assert r.converged


def test_normalize_rewards_matches_tabular_log_ratios():
    problem = Tabular(X=3, Y=5, K=2, beta=0.7, seed=1)
    out = normalize_rewards(problem.rewards, 0.7, log_importance=problem.log_ref)
    np.testing.assert_allclose(out, problem.log_ratios, atol=1e-12)
    # uniform proposal: the partition is the sample mean of exp(r/β)
    r = np.random.default_rng(0).normal(size=(2, 4, 3)) * 300
    out = normalize_rewards(r, 0.1)
    expected = r / 0.1 - logsumexp(r / 0.1, axis=1)[:, None, :] + np.log(4)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert np.all(np.isfinite(out))


def test_normalize_rewards_masks_become_nan():
    r = np.ones((2, 3, 1))
    mask = np.array([[True, True, False], [True, True, True]])
    out = normalize_rewards(r, 1.0, mask=mask)
    assert np.isnan(out[0, 2, 0]) and np.allclose(out[mask], 0.0)
    assert solve_weights(out, mask=mask).weights.tolist() == [1.0]


def test_solver_imports_neither_torch_nor_ray():
    import subprocess

    code = "import mpo_ray.core.solver, sys; print(any(m in sys.modules for m in ('torch', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #

L_OK = np.zeros((3, 4, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(log_ratios=np.zeros((3, 4))), "log_ratios must have 3 dimension"),
        (dict(log_ratios=np.zeros((0, 4, 2))), "non-empty"),
        (dict(log_ratios=[["a"]]), "numeric array"),
        (dict(log_ratios=np.full((3, 4, 2), np.nan)), "NaN or infinite.*mask=False"),
        (dict(log_ratios=np.full((3, 4, 2), np.inf)), "NaN or infinite"),
        (dict(mask=np.ones((3, 5), bool)), r"mask must have shape \(N, m\)"),
        (dict(mask=np.ones((3, 4))), "boolean"),
        (dict(mask=np.array([[True] * 4, [False] * 4, [True] * 4])), r"prompt\(s\) \[1\] with no samples"),
        (dict(log_importance=np.zeros((3, 3))), "log_importance must have shape"),
        (dict(log_importance=np.full((3, 4), np.nan)), "log_importance has a NaN"),
        (dict(objective="minmax"), "objective must be one of"),
        (dict(method="adam"), "method must be one of"),
        (dict(objective="fixed"), "needs weights"),
        (dict(objective="fixed", weights=[1.0]), "1 entries but the table has K=2"),
        (dict(objective="fixed", weights=[0.7, 0.7]), "simplex"),
        (dict(objective="fixed", weights=[1.5, -0.5]), "simplex"),
        (dict(objective="fixed", weights=[np.nan, 1.0]), "NaN"),
        (dict(weights=[0.5, 0.5]), 'only used with objective="fixed"'),
        (dict(init=[0.2, 0.3, 0.5]), "init has 3 entries"),
        (dict(init=[0.9, 0.9]), "init must lie on the simplex"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=2.5), "steps must be a positive integer"),
        (dict(method="bsmd", batch_prompts=10), "exceeds the number of prompts"),
        (dict(method="bsmd", step_size=-1.0), "step_size must be"),
        (dict(tol=-1), "tol must be"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    kwargs = {"log_ratios": L_OK, **kwargs}
    with pytest.raises(ValueError, match=match):
        solve_weights(kwargs.pop("log_ratios"), **kwargs)


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_normalize_rewards_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        normalize_rewards(np.zeros((1, 2, 1)), beta)


def test_normalize_rewards_rejects_bad_rewards():
    with pytest.raises(ValueError, match="rewards must have 3 dimension"):
        normalize_rewards(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="rewards has a NaN"):
        normalize_rewards(np.full((1, 2, 1), np.nan), 1.0)


def test_streaming_bsmd_matches_batch_bsmd_walk_and_is_order_deterministic():
    from mpo_ray.core.streaming import StreamingBSMD

    rng = np.random.default_rng(3)
    L = rng.normal(size=(60, 6, 3)) + np.array([0.3, 0.0, -0.3])
    a, b = StreamingBSMD(3, total_steps=60, step_size=2.0), StreamingBSMD(3, total_steps=60, step_size=2.0)
    for chunk in np.array_split(L, 4):
        a.update(chunk)
    for chunk in np.array_split(L, 7):  # other batch boundaries, same prompt order
        b.update(chunk)
    np.testing.assert_array_equal(a.average, b.average)
    assert a.steps == 60
    full = solve_weights(L)
    assert np.abs(a.average - full.weights).sum() < np.abs(np.full(3, 1 / 3) - full.weights).sum()
    with pytest.raises(ValueError, match="K=2 objectives"):
        a.update(L[..., :2])


# --------------------------------------------------------------------------- #
# Integrity: complex input, unrepresentable magnitudes, never a non-finite answer
# --------------------------------------------------------------------------- #


def _complex_calls():
    from mpo_ray.core.streaming import StreamingBSMD

    L = np.random.default_rng(0).normal(size=(3, 4, 2))
    return {
        "log_ratios": lambda: solve_weights(L + 1e-3j),
        "log_ratios (zero imaginary part)": lambda: solve_weights(L.astype(complex)),
        "log_ratios (object array)": lambda: solve_weights(np.array(L.tolist(), dtype=object) * (1 + 0j)),
        "log_importance": lambda: solve_weights(L, log_importance=np.zeros((3, 4)) + 1j),
        "init": lambda: solve_weights(L, init=[0.5 + 0j, 0.5]),
        "weights": lambda: evaluate_weights(L, [0.5, 0.5 + 1j]),
        "rewards": lambda: normalize_rewards(L * 1j, 1.0),
        "log_ratios (streaming)": lambda: StreamingBSMD(2, 10).update(L + 1j),
    }


@pytest.mark.parametrize("which", list(_complex_calls()))
def test_solver_refuses_complex_input(which):
    name = which.split(" (")[0]
    with pytest.raises(ValueError, match=rf"^{name} is complex;.*np\.real\({name}\)"):
        _complex_calls()[which]()


def test_solver_refuses_unrepresentable_magnitudes():
    from mpo_ray.core.streaming import StreamingBSMD
    from mpo_ray.core.table import MAX_NATS

    L = np.random.default_rng(1).normal(size=(3, 4, 2))
    huge = L.copy()
    huge[1, 2, 0] = 1e300  # the review's case: used to come back as a NaN gap with converged=False
    for method in ("full", "bsmd"):
        with pytest.raises(ValueError, match=r"log_ratios has magnitude 1e\+300 at index \(1, 2, 0\).*1e\+06 nats"):
            solve_weights(huge, method=method)
    with pytest.raises(ValueError, match="log_ratios has magnitude"):
        solve_weights(np.where(L > 0, MAX_NATS * 1.001, L))  # just past the bound
    with pytest.raises(ValueError, match=r"log_importance has magnitude.*subtract each prompt's max"):
        solve_weights(L, log_importance=np.full((3, 4), -1e300))
    with pytest.raises(ValueError, match="numeric array.*too large"):
        solve_weights([[[2**2000, 0]]])  # a Python int that is no float64 at all
    with pytest.raises(ValueError, match=r"rewards/beta is 1e\+300/1 at index \(1, 2, 0\).*larger beta"):
        normalize_rewards(huge, 1.0)
    with pytest.raises(ValueError, match="normalised log-ratios has magnitude 2e\\+06.*larger beta"):
        normalize_rewards(np.array([[[1.0], [-1.0]]]), 1e-6)  # r/β in bounds, its spread is not
    stream = StreamingBSMD(2, total_steps=10, step_size=1.0)
    stream.update(L)
    before = (stream.average.copy(), stream.steps)
    with pytest.raises(ValueError, match="log_ratios has magnitude"):
        stream.update(huge)
    np.testing.assert_array_equal(stream.average, before[0])
    assert stream.steps == before[1]
    # The bound itself and masked samples are fine: only present values must be representable.
    edge = solve_weights(np.where(L > 0, MAX_NATS, -MAX_NATS), tol=1e-3)
    assert np.isfinite(edge.gap) and np.all(np.isfinite(edge.weights))
    mask = np.ones((3, 4), bool)
    mask[1, 2] = False
    np.testing.assert_allclose(solve_weights(huge, mask=mask).weights, solve_weights(L, mask=mask).weights)


def _assert_finite_result(r):
    for x in (r.weights, r.values, r.ess, r.gap, r.dual, r.maxmin_value):
        assert np.all(np.isfinite(x))
    assert r.gap >= 0 and np.all(r.weights >= 0) and r.weights.sum() == pytest.approx(1.0)


def test_solver_never_returns_non_finite_results():
    """Extreme-but-finite tables (magnitudes from 1e-300 to 1e300, constant columns, lopsided importance
    weights, masks): every public entry point either answers with finite numbers or raises ValueError."""
    from mpo_ray.core.streaming import StreamingBSMD

    rng = np.random.default_rng(2024)
    answered = refused = 0

    def attempt(call, check):
        nonlocal answered, refused
        try:
            out = call()
        except ValueError:
            refused += 1
            return
        check(out)
        answered += 1

    for _ in range(30):
        N, m, K = rng.integers(1, 5), rng.integers(1, 5), rng.integers(1, 4)
        scale = 10.0 ** rng.uniform(-300, 300, size=(N, m, K))
        L = rng.choice([-1.0, 1.0], size=(N, m, K)) * scale
        if rng.random() < 0.3:
            L[..., 0] = L[..., -1]  # identical objectives
        if rng.random() < 0.3:
            L = np.clip(L, -1e6, 1e6)  # right at the edge of what is accepted
        log_imp = rng.choice([-1.0, 1.0], size=(N, m)) * 10.0 ** rng.uniform(-300, 7, size=(N, m))
        mask = rng.random((N, m)) < 0.8
        mask[:, 0] = True
        kw = dict(mask=mask, log_importance=log_imp if rng.random() < 0.5 else None)
        attempt(lambda: solve_weights(L, **kw), _assert_finite_result)
        attempt(lambda: solve_weights(L, method="bsmd", steps=20, **kw), _assert_finite_result)
        attempt(lambda: evaluate_weights(L, rng.dirichlet(np.ones(K)), **kw), _assert_finite_result)

        def streamed():
            stream = StreamingBSMD(int(K), total_steps=int(N))
            stream.update(L, mask=kw["mask"], log_importance=kw["log_importance"])
            return stream.average

        attempt(streamed, lambda avg: np.all(np.isfinite(avg)) or pytest.fail(f"non-finite {avg}"))

        def normalised():
            out = normalize_rewards(L, float(10.0 ** rng.uniform(-8, 8)), **kw)
            assert np.all(np.isfinite(out[mask])) and np.all(np.isnan(out[~mask]))
            return solve_weights(out, **kw)  # whatever normalize_rewards returns, the solver accepts

        attempt(normalised, _assert_finite_result)
    assert answered > 10 and refused > 10  # both branches exercised


def test_solver_final_check_refuses_non_finite_output(monkeypatch):
    """The last line of defence: should the arithmetic ever produce NaN, it is raised, not returned."""
    from mpo_ray.core import table

    real = table.Table.evaluate

    def poisoned(self, lam, hessian=False):
        f, g, w, H = real(self, lam, hessian)
        return f, np.full_like(g, np.nan), w, H

    monkeypatch.setattr(table.Table, "evaluate", poisoned)
    with pytest.raises(ValueError, match="values came out non-finite.*refusing to return it"):
        evaluate_weights(np.zeros((2, 3, 2)), [0.5, 0.5])


def test_bootstrap_intervals_cover_the_population_weights():
    """90% percentile intervals from prompt resamples contain the population λ in about 90% of replications."""
    from mpo_ray.core.estimator import bootstrap_weights

    rng = np.random.default_rng(7)
    k, m = 3, 4
    shift = np.array([0.1, 0.0, 0.05])  # an interior optimum, about (0.16, 0.52, 0.32)

    def table(n):  # per-prompt log-ratios with prompt-level and sample-level noise
        return rng.normal(size=(n, 1, k)) * 0.8 + rng.normal(size=(n, m, k)) * 0.6 + shift

    population = solve_weights(table(40_000)).weights
    assert np.all(population > 0.1)
    covered, reps = np.zeros(k), 40
    for _ in range(reps):
        L = table(60)
        boot = bootstrap_weights(
            L, np.ones(L.shape[:2], bool), np.zeros(L.shape[:2]), resamples=120, seed=int(rng.integers(1 << 30))
        )
        covered += (boot["lower"] - 1e-9 <= population) & (population <= boot["upper"] + 1e-9)
        assert np.all(boot["lower"] <= boot["upper"])
    # measured 0.95, 0.875, 1.0 (nominal 0.9; 40 replications); an interval that ignores sampling noise covers ~0
    assert np.all(covered / reps >= 0.75), covered / reps
