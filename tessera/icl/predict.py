"""Classify images from a few labelled examples with a frozen extractor + CAML: no fine-tuning.

Axis legend: N support images, Q queries, W way (classes in the support), C the model's maximum way, D features.

    clf = FewShotClassifier.from_pretrained()            # the shipped default: tessera-resnet-s + caml-s
    probs, classes = clf.classify(support, ["cat", "dog", "cat"], queries)   # probs (Q, W), classes in label order

Labels can be any hashable values; they are mapped to model labels by first appearance in the support
(`tessera.icl.episodes.first_appearance_labels`), and probabilities come back in that order with the original names.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tessera.features import FeatureExtractor, load_extractor
from tessera.icl.episodes import first_appearance_labels
from tessera.icl.model import CAML, CheckpointMismatchError

__all__ = ["FewShotClassifier", "default_checkpoint", "DEFAULT_CHECKPOINT_NAME"]

DEFAULT_CHECKPOINT_NAME = "caml-s"


def default_checkpoint() -> Path:
    """Folder of the CAML shipped with the package (`tessera/assets/icl/caml-s`)."""
    from tessera.paths import package_asset

    return package_asset("icl", DEFAULT_CHECKPOINT_NAME)


class FewShotClassifier:
    """A frozen extractor and a trained CAML, used together for in-context classification.

    Args:
        extractor: the frozen extractor the CAML was trained on.
        model: the CAML model.
        attention: override the model's attention pattern ("exact" or "amortized"); default: as trained.
        query_chunk: queries per forward in exact mode (memory grows with chunk x support size).
    """

    def __init__(self, extractor: FeatureExtractor, model: CAML, attention: str | None = None, query_chunk: int = 256) -> None:
        if extractor.embed_dim != model.cfg.feature_dim:
            raise CheckpointMismatchError(
                f"extractor {extractor.name} gives {extractor.embed_dim}-d features but the CAML expects {model.cfg.feature_dim}"
            )
        self.extractor = extractor.eval()
        self.model = model.eval()
        self.attention = attention
        self.query_chunk = query_chunk

    @property
    def max_way(self) -> int:
        return self.model.cfg.max_way

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, extractor: str | None = None, **kw: Any) -> FewShotClassifier:
        """Load a CAML checkpoint folder (default: the shipped one) and the extractor it names.

        Raises:
            FileNotFoundError: the folder or a file in it is missing.
            CheckpointMismatchError: the folder is not a CAML checkpoint, or its weights/extractor do not fit.
        """
        folder = Path(checkpoint) if checkpoint is not None else default_checkpoint()
        if checkpoint is None and not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{folder}: the default CAML is not in this installation; reproduce it with "
                "`tessera icl train --config configs/icl/caml_s.yaml` or pass --checkpoint"
            )
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: checkpoint folder not found")
        model, doc = CAML.from_pretrained(folder)
        name = extractor or doc.get("extractor")
        if not name:
            raise CheckpointMismatchError(f"{folder / 'config.json'}: does not name the extractor it was trained on (pass extractor=)")
        ext = load_extractor(name)
        if ext.embed_dim != model.cfg.feature_dim:
            raise CheckpointMismatchError(
                f"{folder / 'config.json'}: model expects {model.cfg.feature_dim}-d features, extractor {name} gives {ext.embed_dim}"
            )
        return cls(ext, model, **kw)

    @torch.inference_mode()
    def embed(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) float32."""
        return torch.cat([self.extractor.embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])

    @torch.inference_mode()
    def classify_features(self, support: Tensor, labels: Sequence[Hashable], query: Tensor) -> tuple[np.ndarray, list]:
        """Class probabilities (Q, W) of query features given labelled support features."""
        mapped, classes = first_appearance_labels(list(labels))
        if len(classes) > self.max_way:
            raise ValueError(
                f"the support has {len(classes)} classes but this model supports at most {self.max_way} "
                f"({', '.join(map(str, classes[:12]))}{', ...' if len(classes) > 12 else ''})"
            )
        if len(classes) < 2:
            raise ValueError(f"the support needs at least 2 classes, got {len(classes)} ({classes})")
        if len(mapped) != len(support):
            raise ValueError(f"{len(support)} support items but {len(mapped)} labels")
        lab = torch.from_numpy(mapped)
        out = []
        for i in range(0, len(query), self.query_chunk):
            logits = self.model(support, lab, query[i : i + self.query_chunk], attention=self.attention).logits[0]
            out.append(torch.softmax(logits[:, : len(classes)], dim=-1))
        probs = torch.cat(out) if out else torch.zeros(0, len(classes))
        return probs.numpy(), classes

    def classify(self, support_images: Tensor, labels: Sequence[Hashable], query_images: Tensor) -> tuple[np.ndarray, list]:
        """Class probabilities (Q, W) of query images; columns follow `classes` (first-appearance order)."""
        return self.classify_features(self.embed(support_images), labels, self.embed(query_images))
