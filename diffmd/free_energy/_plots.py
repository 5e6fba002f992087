"""PNG figures of a binding free-energy run: MBAR overlap matrices and convergence (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np

from ..kernels.constants import KCAL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_overlap(matrices: dict, path: str) -> None:
    """One heat map per leg of its (K, K) overlap matrix, annotated with the values (two decimals).

    Neighbouring windows should overlap by more than about 0.03; a near-zero off-diagonal
    band means MBAR's estimate rests on too few shared configurations.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(5.2 * len(matrices), 4.8), squeeze=False)
    for ax, (name, o) in zip(axes[0], matrices.items()):
        o = np.asarray(o)
        im = ax.imshow(o, vmin=0.0, vmax=1.0, cmap="Blues")
        k = o.shape[0]
        if k <= 16:
            for i in range(k):
                for j in range(k):
                    if o[i, j] >= 0.005:
                        ax.text(j, i, f"{o[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if o[i, j] > 0.5 else "black")
        ax.set_title(f"{name} leg: MBAR overlap")
        ax.set_xlabel("window")
        ax.set_ylabel("window")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_convergence(curves: dict, path: str) -> None:
    """dG_bind [kcal/mol] against the simulated production time per window, forward and reverse, with 1-sigma bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    t = np.asarray(curves["ns_per_window"])
    for name, colour in (("forward", "tab:blue"), ("reverse", "tab:orange")):
        y = np.asarray(curves[name]) / KCAL
        e = np.asarray(curves[name + "_error"]) / KCAL
        ax.plot(t, y, "o-", color=colour, label=name)
        ax.fill_between(t, y - e, y + e, color=colour, alpha=0.25)
    ax.set_xlabel("simulated time per window used [ns]")
    ax.set_ylabel("dG bind [kcal/mol]")
    ax.set_title("Convergence: first (forward) or last (reverse) samples", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
