"""PNG plots of the similarity analyses (matplotlib, Agg backend, imported on first use)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.similarity.pairwise import PairwiseStats

__all__ = [
    "plot_anisotropy",
    "plot_heatmap",
    "plot_histograms",
    "plot_matrices",
    "plot_sweep",
]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_histograms(stats: dict[str, PairwiseStats], path: str | Path, title: str = "") -> Path:
    """Pairwise-cosine histograms (e.g. raw vs centered) overlaid, as densities."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lo, hi = 1.0, -1.0
    for name, s in stats.items():
        edges = np.asarray(s.edges)
        dens = np.asarray(s.counts, np.float64) / max(s.n_pairs, 1) / np.diff(edges)
        ax.stairs(dens, edges, label=f"{name} (mean {s.mean:.3f})", fill=False)
        lo, hi = min(lo, s.min), max(hi, s.max)
    if hi > lo:  # the data's range, not [-1, 1]
        pad = 0.03 * (hi - lo)
        ax.set_xlim(max(-1.0, lo - pad), min(1.0, hi + pad))
    ax.set_xlabel("cosine")
    ax.set_ylabel("density")
    n_pairs = max((s.n_pairs for s in stats.values()), default=0)
    ax.set_title(f"{title or 'pairwise cosine'} ({n_pairs:,} pairs)")
    ax.legend()
    return _save(fig, path)


def plot_sweep(
    df: pd.DataFrame,
    columns: dict[str, str],
    path: str | Path,
    title: str,
    *,
    ylabel: str = "cosine",
) -> Path:
    """A layer sweep: one curve per column (``{column: label}``) against ``df["site"]``.

    Rows of the same site (several token pairs, say) are one line per group given by a
    ``pair`` column when there is one.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sites = list(dict.fromkeys(df["site"].tolist()))
    x = {site: i for i, site in enumerate(sites)}
    groups = df.groupby("pair", sort=False) if "pair" in df else [("", df)]
    for key, part in groups:
        for col, label in columns.items():
            name = f"{label} {key}".strip()
            ax.plot([x[v] for v in part["site"]], part[col].to_numpy(), marker="o", label=name)
    ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right")
    ax.set_xlabel("site")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_anisotropy(df: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Anisotropy measures per site (one curve each)."""
    cols = {c: c for c in ("baseline", "self_similarity_adj", "intra_doc_adj")}
    n = int(df["n_rows"].iloc[0]) if "n_rows" in df and len(df) else 0
    return plot_sweep(df, cols, path, title or f"anisotropy per layer ({n:,} rows)")


def plot_matrices(
    mats: dict[str, Any], labels: list[str], path: str | Path, title: str = ""
) -> Path:
    """Several k x k similarity matrices side by side (e.g. centroid vs embed vs unembed)."""
    plt = _plt()
    shown = {k: v for k, v in mats.items() if not np.all(np.isnan(v))}
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
    for ax, (name, M) in zip(axes[0], shown.items(), strict=True):
        im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(name)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_heatmap(df: pd.DataFrame, value: str, path: str | Path, title: str = "") -> Path:
    """A site_a x site_b heatmap of one measure column of a comparison table."""
    plt = _plt()
    piv = df.pivot(index="site_a", columns="site_b", values=value)
    piv = piv.loc[list(dict.fromkeys(df.site_a)), list(dict.fromkeys(df.site_b))]
    fig, ax = plt.subplots(figsize=(1 + 0.6 * piv.shape[1], 1 + 0.5 * piv.shape[0]))
    im = ax.imshow(piv.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(piv.shape[1]), piv.columns.tolist(), rotation=90)
    ax.set_yticks(range(piv.shape[0]), piv.index.tolist())
    for (i, j), v in np.ndenumerate(piv.to_numpy()):
        color = "k" if v > 0.6 else "w"  # readable on viridis' light and dark ends
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax)
    ax.set_title(title or value)
    return _save(fig, path)
