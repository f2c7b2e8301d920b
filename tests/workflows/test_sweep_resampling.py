"""Which sweep points resample: every mixture with the configured n; one model untempered draws once (same law)."""

from mpo_ray.workflows.sweep import point_candidates


def test_mixtures_resample_and_single_models_draw_once_when_untempered():
    untempered = {"temperature": 1.0, "top_k": None, "top_p": None, "num_candidates": 4}
    assert point_candidates([0.0, 0.5, 0.5, 0.0], untempered) == 4
    assert point_candidates([0.0, 1.0, 0.0, 0.0], untempered) == 1  # a single policy
    assert point_candidates([1.0, 0.0, 0.0, 0.0], untempered) == 1  # π_ref
    assert point_candidates([0.0, 0.5, 0.5], {**untempered, "num_candidates": 1}) == 1


def test_a_tempered_or_truncated_single_model_keeps_its_candidates():
    """Resampling a tempered draw by π/q moves it back towards the untempered model: not a no-op."""
    for tempered in ({"temperature": 0.7}, {"top_k": 50}, {"top_p": 0.9}):
        params = {"temperature": 1.0, "top_k": None, "top_p": None, "num_candidates": 4, **tempered}
        assert point_candidates([0.0, 1.0, 0.0], params) == 4
