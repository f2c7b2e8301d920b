"""PNG plots of a run (matplotlib, headless): the solver's path, the objectives per mixture, the sweep front."""

from __future__ import annotations

import io

import numpy as np

from mpo_ray.io import storage


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'mpo-ray[demo]' (or matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, uri: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(uri, buf.getvalue())
    fig.clf()


def plot_solver(uri: str, names: list[str], full, bsmd, bsmd_gaps: tuple[np.ndarray, np.ndarray]) -> None:
    """λ along BSMD (the paper's algorithm, averaged iterate) against the full solve's λ*, and the
    certificate gap on the whole score table: BSMD's per step, the full solve's per iteration."""
    plt = _pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    steps = np.arange(len(bsmd.history.weights))
    avg = np.cumsum(bsmd.history.weights, axis=0) / (steps[:, None] + 1)
    for k, name in enumerate(names):
        (line,) = a.plot(steps, avg[:, k], label=name)
        a.axhline(full.weights[k], color=line.get_color(), ls="--", lw=1)
    a.set(
        xlabel="BSMD step (one prompt per step)",
        ylabel="λ",
        ylim=(0, 1),
        title="λ along mirror descent (dashed: full-batch λ*)",
    )
    a.legend(fontsize=8)
    at, gaps = bsmd_gaps
    b.semilogy(at, np.maximum(gaps, 1e-16))
    b.set(xlabel="BSMD step", ylabel="certificate gap (nats)", title="BSMD: gap of the averaged λ")
    it = np.arange(len(full.history.gap))
    c.semilogy(it, np.maximum(full.history.gap, 1e-16), "o-")
    c.set(xlabel="iteration", ylabel="certificate gap (nats)", title="Full-batch solve: gap per iteration")
    c.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    _save(fig, uri)
    plt.close(fig)


def plot_objectives(uri: str, results: list[dict]) -> None:
    """Win rate against π_ref per objective for each mixture, with 95% intervals; the MaxMin
    number (the worst objective) in each legend entry."""
    plt = _pyplot()
    objs = list(results[0]["objectives"])
    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(results)), 4))
    width = 0.8 / len(objs)
    x = np.arange(len(results))
    for j, obj in enumerate(objs):
        rates = np.array([r["objectives"][obj]["win_rate"] for r in results])
        ci = np.array([r["objectives"][obj]["win_rate_ci95"] for r in results])
        ax.bar(x + (j - (len(objs) - 1) / 2) * width, rates, width, label=obj, yerr=np.abs(ci.T - rates), capsize=3)
    ax.scatter(
        x,
        [r["min_win_rate"] for r in results],
        marker="_",
        s=900,
        color="black",
        zorder=3,
        label="min over objectives (MaxMin)",
    )
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x, [r["name"] for r in results])
    ax.set(ylabel="win rate vs π_ref", ylim=(0, 1), title="Each objective, per policy (higher is better)")
    ax.legend(fontsize=8, ncol=len(objs) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    _save(fig, uri)
    plt.close(fig)


def plot_front(uri: str, sweep: dict) -> None:
    """The sweep: win rates of the first two objectives for every grid point (colour: the worst
    objective's win rate), MPO starred; with K = 3, also the grid on the simplex."""
    plt = _pyplot()
    points = [p for p in sweep["points"] if p["weights"] is not None]
    objs = list(points[0]["objectives"])
    k = len(sweep["policies"])
    fig, axes = plt.subplots(1, 2 if k == 3 else 1, figsize=(11 if k == 3 else 5.5, 4.5), squeeze=False)
    a = axes[0, 0]
    xy = np.array([[p["objectives"][objs[0]]["win_rate"], p["objectives"][objs[1]]["win_rate"]] for p in points])
    colour = np.array([p["min_win_rate"] for p in points])
    sc = a.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="viridis", vmin=0, vmax=max(0.6, colour.max()), s=50)
    fig.colorbar(sc, ax=a, label="min win rate over objectives")
    for p, (px, py) in zip(points, xy):
        if p["name"] == "MPO":
            a.scatter([px], [py], marker="*", s=320, facecolor="none", edgecolor="red", lw=2, label="MPO", zorder=4)
        elif max(p["weights"]) == 1.0:
            right = px > xy[:, 0].mean()
            a.annotate(
                sweep["policies"][int(np.argmax(p["weights"]))],
                (px, py),
                fontsize=8,
                xytext=(-4 if right else 4, 4),
                textcoords="offset points",
                ha="right" if right else "left",
            )
    a.set(
        xlabel=f"{objs[0]} win rate vs π_ref",
        ylabel=f"{objs[1]} win rate vs π_ref",
        title="Trade-off front of the sweep",
    )
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    if k == 3:
        b = axes[0, 1]
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
        pos = np.array([np.asarray(p["weights"]) @ corners for p in points])
        b.plot(*np.vstack([corners, corners[:1]]).T, color="gray", lw=0.8)
        sc = b.scatter(pos[:, 0], pos[:, 1], c=colour, cmap="viridis", vmin=0, vmax=max(0.6, colour.max()), s=90)
        for p, (px, py) in zip(points, pos):
            if p["name"] == "MPO":
                b.scatter([px], [py], marker="*", s=320, facecolor="none", edgecolor="red", lw=2, zorder=4)
        for name, (cx, cy) in zip(sweep["policies"], corners):
            b.annotate(
                name, (cx, cy), fontsize=9, ha="center", xytext=(0, -14 if cy == 0 else 6), textcoords="offset points"
            )
        b.set(title="Weights on the simplex (colour: min win rate)", aspect="equal")
        b.axis("off")
    _save(fig, uri)
    plt.close(fig)
