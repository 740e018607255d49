"""ELMES: the Equal Length and Maximally Equiangular Set of label vectors CAML encodes support labels with.

Axis legend: C classes, p label-embedding dimension.

CAML (Fifty et al., ICLR 2024, section 4) shows that, when labels are symmetric, the label embeddings that make a
class easiest to detect in the sequence are an ELMES: C vectors of equal (unit) length whose pairwise inner products
are all -1/(C-1), the most negative value C vectors can share (they sum to zero, a simplex). The construction
follows the paper and its code (`get_elmes` in `src/models/TransformerEncoder.py`; papers-digest B1):

    M* = sqrt(C / (C - 1)) (I_C - 1 1^T / C)              the simplex equiangular tight frame in R^C
    U  = first C columns of Q in the QR decomposition of a p x C matrix of Uniform[0, 1) draws from NumPy's
         legacy generator seeded 50 (`np.random.seed(50); np.random.random((p, C))`)
    ELMES = (U M*)^T in R^{C x p}

U has orthonormal columns, so it embeds the simplex isometrically in R^p: rows stay unit length, pairwise inner
products stay -1/(C-1) and the rows still sum to zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["elmes"]


def elmes(num_classes: int, dim: int, seed: int = 50) -> Tensor:
    """The C x p ELMES of CAML, as float32.

    Args:
        num_classes: C >= 2, the number of label vectors (the model's maximum way).
        dim: p >= C, their dimension.
        seed: seed of NumPy's legacy generator for the random basis (50 in the paper's code).

    Returns:
        (C, p) tensor: unit rows, pairwise inner product -1/(C-1), rows summing to zero.

    Raises:
        ValueError: C < 2 or p < C (C equiangular vectors with these angles need C-1 dimensions; the construction
            needs C).
    """
    if num_classes < 2:
        raise ValueError(f"an ELMES needs at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise ValueError(f"ELMES dimension {dim} must be >= the number of classes {num_classes}")
    c = num_classes
    m_star = np.sqrt(c / (c - 1)) * (np.eye(c) - np.ones((c, c)) / c)  # (C, C)
    u = np.random.RandomState(seed).random_sample((dim, c))  # == np.random.seed(seed); np.random.random((p, C))
    q = np.linalg.qr(u)[0][:, :c]  # (p, C) orthonormal columns
    return torch.from_numpy((q @ m_star).T.copy()).to(torch.float32)  # (C, p)
