"""The final run's evaluation: confusion matrices, per-class precision/recall/F1 and ROC-AUC, ROC curves,
calibration (ECE and a reliability diagram) and the most confidently wrong test images."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpo.report.plots import confusion_matrix_png, pyplot

ECE_BINS = 15
ERROR_GRID = 25


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS):
    """ECE over equal-width confidence bins; also returns (confidence, accuracy, count) per bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            conf, acc = confidence[mask].mean(), correct[mask].mean()
            ece += mask.mean() * abs(conf - acc)
            rows.append((float(conf), float(acc), int(mask.sum())))
        else:
            rows.append((float((edges[b] + edges[b + 1]) / 2), float("nan"), 0))
    return float(ece), rows


def roc_png(positives: np.ndarray, scores: np.ndarray, names: Sequence[str], path: Path, title: str) -> list[float]:
    """One ROC curve per column of ``positives`` (bool, N x K) against ``scores``; returns each column's
    ROC-AUC (NaN where a column is all one value)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    aucs = []
    for j, name in enumerate(names):
        column = positives[:, j]
        if column.all() or not column.any():
            aucs.append(float("nan"))
            continue
        fpr, tpr, _ = roc_curve(column, scores[:, j])
        aucs.append(float(roc_auc_score(column, scores[:, j])))
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUC {aucs[-1]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return aucs


def write_evaluation(
    logits: np.ndarray, y_true: np.ndarray, images: np.ndarray, classes: Sequence[str], out: Path, title: str
) -> dict[str, float]:
    """Write every evaluation artifact into ``out``; return the summary metrics to log."""
    from sklearn.metrics import precision_recall_fscore_support

    n = len(classes)
    probs = softmax(logits.astype(np.float64))
    y_pred = probs.argmax(axis=1)
    accuracy = float((y_pred == y_true).mean())
    cm = confusion_matrix(y_true, y_pred, n)
    confusion_matrix_png(
        cm, classes, out / "confusion_matrix.png", f"{title}: test accuracy {accuracy:.2%}", normalized=False
    )
    confusion_matrix_png(
        cm,
        classes,
        out / "confusion_matrix_normalized.png",
        f"{title}: recall per class (rows sum to 1)",
        normalized=True,
    )
    np.savetxt(out / "confusion_matrix.csv", cm, fmt="%d", delimiter=",", header=",".join(classes))

    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=range(n), zero_division=0)
    aucs = roc_png(
        np.stack([y_true == c for c in range(n)], 1),
        probs,
        classes,
        out / "roc_curves.png",
        f"{title}: one-vs-rest ROC",
    )
    plt = pyplot()

    with (out / "per_class_metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "precision", "recall", "f1", "roc_auc", "support"])
        for c in range(n):
            writer.writerow(
                [
                    classes[c],
                    f"{precision[c]:.4f}",
                    f"{recall[c]:.4f}",
                    f"{f1[c]:.4f}",
                    f"{aucs[c]:.4f}",
                    int(support[c]),
                ]
            )

    ece, bins = expected_calibration_error(probs, y_true)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    centers = np.linspace(0.5 / ECE_BINS, 1 - 0.5 / ECE_BINS, ECE_BINS)
    ax.bar(
        centers, [b[1] if b[2] else 0 for b in bins], width=1 / ECE_BINS, edgecolor="black", alpha=0.7, label="accuracy"
    )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set(
        xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}: reliability (ECE {ece:.3f})"
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reliability.png")
    plt.close(fig)

    _confident_errors_png(probs, y_true, images, classes, out / "confident_errors.png", title)
    valid = [a for a in aucs if not np.isnan(a)]
    return {
        "test_macro_f1": float(np.mean(f1)),
        "test_macro_roc_auc": float(np.mean(valid)) if valid else 0.0,
        "test_ece": ece,
    }


def _confident_errors_png(probs, y_true, images, classes, path: Path, title: str) -> None:
    plt = pyplot()
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]])][:ERROR_GRID]
    cols = 5
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.3), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        img = images[i].transpose(1, 2, 0)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        ax.set_title(f"true {classes[y_true[i]]}\npred {classes[y_pred[i]]} {probs[i, y_pred[i]]:.0%}", fontsize=7)
    fig.suptitle(f"{title}: most confidently wrong test images" if len(wrong) else f"{title}: no errors")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metric_name(label: str) -> str:
    """A label as MLflow allows in a metric name (alphanumerics, _ - . / and spaces)."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in label)


def write_multilabel_evaluation(
    logits: np.ndarray, y_true: np.ndarray, labels: Sequence[str], out: Path, title: str
) -> dict[str, float]:
    """A multi-label task's evaluation: per-label accuracy, precision, recall, F1 and ROC-AUC
    (``per_label_metrics.csv``), subset accuracy, Hamming loss, ROC curves per label and a bar chart of
    per-label accuracy and ROC-AUC. Returns the metrics to log, per label among them."""
    from sklearn.metrics import precision_recall_fscore_support

    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    y_true = (y_true > 0.5).astype(np.int64)
    y_pred = (probs >= 0.5).astype(np.int64)
    per_label_acc = (y_pred == y_true).mean(axis=0)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    aucs = roc_png(y_true.astype(bool), probs, labels, out / "roc_curves.png", f"{title}: ROC per label")
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4.5), dpi=110)
    xs = np.arange(len(labels))
    ax.bar(xs - 0.2, per_label_acc, 0.4, label="accuracy")
    ax.bar(xs + 0.2, [0 if np.isnan(a) else a for a in aucs], 0.4, label="ROC-AUC")
    ax.set_xticks(xs, labels, rotation=45, ha="right")
    ax.set(ylim=(0, 1), title=f"{title}: per label on the test set")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "per_label.png")
    plt.close(fig)

    with (out / "per_label_metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "accuracy", "precision", "recall", "f1", "roc_auc", "positives"])
        for j, label in enumerate(labels):
            writer.writerow(
                [
                    label,
                    f"{per_label_acc[j]:.4f}",
                    f"{precision[j]:.4f}",
                    f"{recall[j]:.4f}",
                    f"{f1[j]:.4f}",
                    f"{aucs[j]:.4f}",
                    int(support[j]),
                ]
            )

    valid = [a for a in aucs if not np.isnan(a)]
    metrics = {
        "test_subset_accuracy": float((y_pred == y_true).all(axis=1).mean()),
        "test_hamming_loss": float((y_pred != y_true).mean()),
        "test_macro_f1": float(np.mean(f1)),
        "test_macro_roc_auc": float(np.mean(valid)) if valid else 0.0,
    }
    for j, label in enumerate(labels):
        metrics[f"test_accuracy.{metric_name(label)}"] = float(per_label_acc[j])
        if not np.isnan(aucs[j]):
            metrics[f"test_roc_auc.{metric_name(label)}"] = aucs[j]
    return metrics
