"""PNG plots a person would rather look at: training curves, ROC, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _title(fig, title: str, fontsize: float) -> None:
    """The title centred on the figure and wrapped to its width, so a long model or data name is
    never clipped (an axes title is centred on the axes, which the y labels push right)."""
    import textwrap

    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)) - 4)  # ~0.6 em per character
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in title.split("\n")), fontsize=fontsize)


def plot_history(history_csv: Path, out: Path, title: str) -> Optional[Path]:
    import csv

    with open(history_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = _plt()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    keys = ("loss", "auc") if "auc" in rows[0] else ("map_loss", "logit_loss")  # a fracture map: its two losses
    for ax, key in zip(axes, keys):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_roc(y_val, p_val, y_test, p_test, metrics: Dict, out: Path, title: str) -> Path:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    auc_t = metrics["test"]["roc_auc"]
    for y, p, name in ((y_val, p_val, "validation"), (y_test, p_test, "test")):
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        label = name
        if name == "test" and auc_t["auc"] is not None:
            label += f" AUC {auc_t['auc']:.3f} (95% CI {auc_t['ci_low']:.3f}-{auc_t['ci_high']:.3f})"
        ax.plot(fpr, tpr, label=label)
    at = metrics["test"]["at_chosen_threshold"]
    if at["sensitivity"] is not None and at["specificity"] is not None:
        ax.plot(1 - at["specificity"], at["sensitivity"], "ko",
                label=f"threshold {metrics['threshold']['value']:.3f} ({metrics['threshold']['rule']})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    _title(fig, title, 12)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(conf: Dict[str, int], out: Path, title: str) -> Path:
    plt = _plt()
    m = np.array([[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], ["non-fractured", "fractured"])
    ax.set_yticks([0, 1], ["non-fractured", "fractured"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _title(fig, title, 9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
