"""`mpo-ray bench solver` runs small and its full solve converges (the figures themselves are not asserted)."""

import re

from mpo_ray.benchmarks.solver import main


def test_bench_solver_runs_small_and_the_full_solve_converges(capsys):
    main(["--prompts", "300", "--samples", "4", "--objectives", "3", "--tol", "1e-9"])
    out = capsys.readouterr().out
    full = re.search(r"full : .*gap=(\S+)\s+converged=(\w+)", out)
    assert full and full.group(2) == "True" and float(full.group(1)) <= 1e-9, out
    assert "ratio: bsmd (one pass) / full" in out
