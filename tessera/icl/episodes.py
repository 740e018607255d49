"""Few-shot episodes: seeded sampling, first-appearance labels, and fixed evaluation episode lists.

Axis legend: N support items (way x shot), M query items, W way, D embedding size.

Labels inside an episode are always *first-appearance* labels: the class of the first support item is 0, the next
new class 1, and so on; query labels use the same mapping. This is the one rule everything in `tessera.icl` shares
(models, baselines, the CLI), and it removes the official CAML loop's label-order hazard (papers-digest B5: labels
remapped with `torch.unique(sorted=False)`, whose order changed between torch versions, then query labels flipped):
targets are derived from the actual labels, never from an assumed layout, so shuffling the support or the queries
cannot silently change what is learned.

An evaluation run draws its episodes from `episode_rng(seed, index)`, so episode i is the same for every method,
every run and every machine (numpy's PCG64 stream is platform independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Episode", "first_appearance_labels", "class_index", "sample_episode", "episode_rng", "fixed_episodes"]


@dataclass
class Episode:
    """Item indices and first-appearance labels of one episode.

    Attributes:
        support: (N,) dataset indices of the support items, in presentation order.
        support_labels: (N,) labels 0..W-1 by first appearance in `support`.
        query: (M,) dataset indices of the queries.
        query_labels: (M,) labels of the queries under the same mapping.
        classes: (W,) dataset class of each episode label.
    """

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray

    @property
    def way(self) -> int:
        return len(self.classes)


def first_appearance_labels(labels: Tensor | np.ndarray | list) -> tuple[np.ndarray, list]:
    """Map arbitrary labels (ints or strings) to 0..W-1 by order of first appearance.

    Returns:
        (mapped labels as int64 array, the original label of each new index).
    """
    values = labels.tolist() if isinstance(labels, (Tensor, np.ndarray)) else list(labels)
    order: dict = {}
    mapped = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v not in order:
            order[v] = len(order)
        mapped[i] = order[v]
    return mapped, list(order)


def class_index(labels: np.ndarray) -> list[np.ndarray]:
    """Dataset indices of each class: `out[c]` lists the items with label c (sorted)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2 if len(labels) else 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(len(bounds) - 1)]


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of episode `index` of a run seeded `seed` (independent streams, platform independent)."""
    return np.random.default_rng([int(seed), int(index)])


def sample_episode(
    classes: list[np.ndarray],
    way: int,
    shot: int,
    query: int,
    rng: np.random.Generator,
    *,
    min_query: int = 1,
    shuffle_support: bool = True,
) -> Episode:
    """Draw a `way`-way `shot`-shot episode with up to `query` queries per class.

    Classes need at least `shot + min_query` items; a class with fewer than `shot + query` items contributes all its
    remaining items as queries (icon classes have 6-8 drawings). Support and queries never share an item.

    Args:
        classes: dataset indices per class (`class_index`).
        way, shot, query: episode shape.
        rng: the episode's generator.
        min_query: queries each class must be able to provide.
        shuffle_support: present the support in random order (True) or class-blocked (False).
    """
    if way < 1 or shot < 1 or query < 0:
        raise ValueError(f"need way >= 1, shot >= 1, query >= 0; got way={way}, shot={shot}, query={query}")
    eligible = [c for c, idx in enumerate(classes) if len(idx) >= shot + min_query]
    if len(eligible) < way:
        raise ValueError(f"{way}-way {shot}-shot episodes need {way} classes with >= {shot + min_query} items; only {len(eligible)} have")
    chosen = rng.choice(eligible, size=way, replace=False)
    sup, sup_cls, qry, qry_cls = [], [], [], []
    for c in chosen:
        items = rng.permutation(classes[c])
        sup.append(items[:shot])
        sup_cls += [c] * shot
        q = items[shot : shot + query]
        qry.append(q)
        qry_cls += [c] * len(q)
    support = np.concatenate(sup)
    support_cls = np.asarray(sup_cls)
    if shuffle_support:
        perm = rng.permutation(len(support))
        support, support_cls = support[perm], support_cls[perm]
    support_labels, order = first_appearance_labels(support_cls)
    lut = {c: i for i, c in enumerate(order)}
    query_idx = np.concatenate(qry) if qry else np.zeros(0, np.int64)
    query_labels = np.asarray([lut[c] for c in qry_cls], dtype=np.int64)
    perm = rng.permutation(len(query_idx))  # query order is irrelevant to every method here; shuffle to prove it
    return Episode(support, support_labels, query_idx[perm], query_labels[perm], np.asarray(order))


def fixed_episodes(
    labels: np.ndarray, way: int, shot: int, query: int, num: int, seed: int, *, min_query: int = 1
) -> list[Episode]:
    """The `num` evaluation episodes of a (dataset, way, shot, seed): identical for every method that asks."""
    if num < 0:
        raise ValueError(f"num (episodes) must be >= 0, got {num}")
    classes = class_index(labels)
    return [sample_episode(classes, way, shot, query, episode_rng(seed, i), min_query=min_query) for i in range(num)]


def gather(features: np.ndarray | Tensor, idx: np.ndarray) -> Tensor:
    """Rows `idx` of a (memory-mapped) feature matrix as a float32 tensor."""
    if isinstance(features, Tensor):
        return features[torch.as_tensor(idx)].float()
    return torch.from_numpy(np.ascontiguousarray(features[idx], dtype=np.float32))
