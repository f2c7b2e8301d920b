"""`mpo-ray bench generate` runs small: the Ray Data pipeline and the in-process loop decode the same tokens.

The figures (tok/s and their ratios) are not asserted; that both paths ran and produced identical token counts
is, so the benchmark cannot silently break when what it reads from generate's summary changes."""

import pytest
import ray

from mpo_ray.benchmarks.generate import main


@pytest.mark.slow  # a local Ray cluster and the tiny models
def test_bench_generate_runs_small_and_both_paths_decode_the_same_tokens(capsys):
    rows = main(["--prompts", "8", "--max-new-tokens", "4", "--batch-size", "4", "--replicas", "1", "--num-cpus", "2"])
    assert not ray.is_initialized()
    modes = [r["mode"] for r in rows]
    assert any(m.startswith("Ray Data, 1 replica(s)") for m in modes) and any(m.startswith("in-process") for m in modes)
    assert len({r["tokens"] for r in rows}) == 1 and rows[0]["tokens"] > 0, rows
    assert "token counts differ" not in capsys.readouterr().out
