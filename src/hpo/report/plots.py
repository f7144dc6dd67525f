from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(
    cm: np.ndarray, classes: Sequence[str], path: Path, title: str, normalized: bool = False
) -> Path:
    """Confusion matrix coloured by row share (recall on the diagonal); cells show counts, or shares
    when ``normalized``."""
    plt = pyplot()
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                text = f"{norm[i, j]:.2f}" if normalized else str(int(cm[i, j]))
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black"
                )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def learning_curves_png(search: Sequence[dict], retrain: Sequence[dict], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch: the winning trial's train/val curves and the final retrain's."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for rows, label, style in ((search, "trial", "-"), (retrain, "retrain", "--")):
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(
            epochs, [r["train_loss"] for r in rows], style, color="tab:blue", marker=".", label=f"{label} train"
        )
        ax_acc.plot(epochs, [r["train_accuracy"] for r in rows], style, color="tab:blue", label=f"{label} train")
        if rows[0].get("val_loss") is not None:
            ax_loss.plot(epochs, [r["val_loss"] for r in rows], style, color="tab:orange", label=f"{label} val")
            ax_acc.plot(epochs, [r["val_accuracy"] for r in rows], style, color="tab:orange", label=f"{label} val")
    from matplotlib.ticker import MaxNLocator

    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
