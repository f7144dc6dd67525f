"""Seeded, stratified sampling: what every loader and ``load_data`` split with."""

from __future__ import annotations

import numpy as np


def strata(labels: np.ndarray) -> np.ndarray:
    """What stratified sampling keeps in proportion: the class, or a multi-label row's label combination."""
    return np.unique(labels, axis=0, return_inverse=True)[1].ravel() if labels.ndim == 2 else labels


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``labels`` keeping class proportions (largest remainders), sorted."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for i in np.argsort(exact - take)[::-1][: n - take.sum()]:
        take[i] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def split_indices(labels: np.ndarray, test_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) indices holding out ``test_split`` of ``labels`` (at least one example)."""
    test = stratified_sample(strata(labels), max(1, round(len(labels) * test_split)), np.random.default_rng(seed))
    return np.setdiff1d(np.arange(len(labels)), test), test


def rarest_label(labels: np.ndarray) -> np.ndarray:
    """What a data-fidelity subset keeps in proportion: the class; for multi-label rows (0/1, N x labels),
    each row's rarest label (-1 for a row with none). A row's label combination is often unique, which
    leaves nothing to keep in proportion; its rarest label keeps every label's share, the rare ones most."""
    if labels.ndim == 1:
        return labels
    positives = labels.astype(bool)
    counts = positives.sum(axis=0)
    rarity = np.where(positives, counts, np.iinfo(np.int64).max)  # a label a row lacks never wins
    return np.where(positives.any(axis=1), rarity.argmin(axis=1), -1)


def nested_subsets(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Stratified subsets of ``labels`` (see ``rarest_label``) of the given ascending ``sizes``, each inside
    the next: sorted indices, drawn from the largest down, each a stratified sample of the one above it."""
    if list(sizes) != sorted(sizes):
        raise ValueError(f"sizes must be ascending (got {sizes})")
    rng = np.random.default_rng(seed)
    keys = rarest_label(labels)
    subsets: list[np.ndarray] = []
    current = np.arange(len(labels))
    for n in reversed(sizes):
        current = current[stratified_sample(keys[current], n, rng)]
        subsets.append(current)
    return subsets[::-1]
