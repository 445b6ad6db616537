"""Citable figures: PNG + PDF + tidy CSV under a stable ID, with a provenance caption and BibTeX."""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import uuid
from pathlib import Path

import pandas as pd

from .. import __version__
from ..store import atomic_write_bytes, config_key


def commit() -> str:
    """The source commit: ``$HESSBATCH_COMMIT``, else ``git rev-parse``, else the package version."""
    if os.environ.get("HESSBATCH_COMMIT"):
        return os.environ["HESSBATCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"v{__version__}"


def config_hash(params: dict) -> str:
    return config_key("chapter", params)[:10]


def save(fig, fig_id: str, data: pd.DataFrame, title: str, params: dict, outdir: str | Path = "figures",
         source: str = "Reproduction of Yao et al., NeurIPS 2018") -> str:
    """Write ``<fig_id>.png``, ``.pdf`` and ``.csv`` to ``outdir``; return a Markdown caption
    naming the profile, the page (``params["variant"]``, which also suffixes the ID), dataset,
    model, commit and configuration hash, with download links and a BibTeX entry to cite the figure (``source``: what the figure reproduces, or follows)."""
    if params.get("variant"):  # each page of a chapter (variant, swept value) has its own figures
        fig_id = f"{fig_id}--{params['variant']}"
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        tmp = outdir / f".{fig_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.{ext}"  # two builds into one folder
        try:
            fig.savefig(tmp, dpi=150 if ext == "png" else None, bbox_inches="tight")
            os.replace(tmp, outdir / f"{fig_id}.{ext}")
        finally:
            tmp.unlink(missing_ok=True)
    atomic_write_bytes(outdir / f"{fig_id}.csv", data.to_csv(index=False).encode())
    h, c = config_hash(params), commit()
    page = f", page `{params['variant']}`" if params.get("variant") else ""
    meta = (f"profile `{params.get('profile', 'custom')}`{page}, dataset `{params.get('dataset', '-')}`, "
            f"model `{params.get('model', '-')}`, commit `{c}`, configuration `{h}`")
    rel = os.path.relpath(outdir, Path.cwd()) if outdir.is_absolute() else str(outdir)
    links = " · ".join(f"[{e.upper()}]({rel}/{fig_id}.{e})" for e in ("png", "pdf", "csv"))
    import html

    return (f"**Figure `{fig_id}`.** {title} ({meta}.) Download: {links}.\n\n"
            f"<details><summary>Cite this figure (BibTeX)</summary>\n\n"
            f"<pre>{html.escape(bibtex(fig_id, title, c, h, source))}</pre>\n\n</details>")


def bibtex(fig_id: str, title: str, commit_id: str, cfg_hash: str, source: str = "Reproduction of Yao et al., NeurIPS 2018") -> str:
    year = _dt.date.today().year
    key = f"hessbatch-{fig_id}-{cfg_hash[:6]}"
    return (f"@misc{{{key},\n  title = {{{{hessbatch}} figure {fig_id}: {title}}},\n"
            f"  author = {{{{hessbatch contributors}}}},\n  year = {{{year}}},\n"
            f"  note = {{{source}; commit {commit_id}, configuration {cfg_hash}}},\n"
            f"  howpublished = {{hessbatch {__version__}}}\n}}")


def log_ticks(axes, values, axis: str = "x") -> None:
    """A base-2 log axis labelled at ``values`` (plain numbers, no minor labels) on each of ``axes``."""
    import numpy as np

    values = sorted(set(float(v) for v in values))
    for ax in np.atleast_1d(axes).flat:
        getattr(ax, f"set_{axis}scale")("log", base=2)
        getattr(ax, f"set_{axis}ticks")(values, [f"{v:g}" for v in values])
        getattr(ax, f"{axis}axis").set_minor_formatter("")


def surfaces(surf: pd.DataFrame, batch_sizes: list, split: str = "train"):
    """Fig. 3: one filled contour panel of the loss on the plane of the top two eigenvectors per
    batch size."""
    import matplotlib.pyplot as plt

    d = surf[surf["split"] == split]
    fig, axes = plt.subplots(1, len(batch_sizes), figsize=(4.6 * len(batch_sizes), 4), squeeze=False)
    for ax, b in zip(axes[0], batch_sizes):
        grid = d[d["batch_size"] == b].pivot(index="beta", columns="alpha", values="loss")
        fig.colorbar(ax.contourf(grid.columns, grid.index, grid.values, levels=20, cmap="viridis"), ax=ax)
        ax.set_title(f"B = {b}: {split} loss"); ax.set_xlabel("ε₁ (v₁)"); ax.set_ylabel("ε₂ (v₂)")
    fig.tight_layout()
    return fig


def layer_spectra(layers: pd.DataFrame):
    """The top eigenvalue of each layer's block of the Hessian, one bar per batch size: which layers
    carry the sharpness."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    top = layers[layers["rank"] == 1].assign(layer=lambda t: t["layer"] + " (" + t["module"] + ")")
    fig, ax = plt.subplots(figsize=(7, 0.35 * top["layer"].nunique() * top["batch_size"].nunique() ** 0.5 + 1.6))
    sns.barplot(data=top, y="layer", x="eigenvalue", hue="batch_size", palette="viridis", ax=ax)
    ax.set_xscale("log" if (top["eigenvalue"] > 0).all() else "symlog")
    ax.set_xlabel("top eigenvalue of the layer's Hessian block"); ax.set_ylabel("layer")
    fig.tight_layout()
    return fig
