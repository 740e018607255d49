"""The model work behind each page, as plain functions of validated inputs (the routes only parse and render).

Axis legend: h w token grid, K codebook size, S support images, Q queries, W classes.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tessera.serve.errors import ServeError

__all__ = ["png_data_uri", "load_tokenizer_folder", "load_classifier_folder", "tokenize_image", "classify_fewshot"]


def png_data_uri(image: Image.Image | torch.Tensor, scale: int = 1) -> str:
    """A PNG data URI of a PIL image or a float (3, H, W) tensor in [0, 1], optionally upscaled (nearest)."""
    if isinstance(image, torch.Tensor):
        arr = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(arr)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def load_tokenizer_folder(folder: Path) -> Any:
    from tessera.tokenizer import ImageTokenizer

    return ImageTokenizer.from_pretrained(folder).eval()


def load_classifier_folder(folder: Path) -> Any:
    from tessera.icl.predict import FewShotClassifier

    return FewShotClassifier.from_pretrained(folder)


@torch.inference_mode()
def tokenize_image(tok: Any, image: Image.Image) -> dict[str, Any]:
    """Token grid, reconstruction and per-token codebook usage of one image.

    "Usage" here is within the image: for each grid cell, how many cells of the image use the same code; plus the
    number of distinct codes, their perplexity and the image's code histogram.
    """
    cfg = tok.config
    x = tok._prepare(image)  # (1, 3, H, W): resized (shorter side) and centre-cropped to the tokenizer's size
    tokens = tok.encode(x)[0].cpu()  # (h, w)
    recon = tok.decode(tokens.unsqueeze(0))[0].cpu()
    flat = tokens.flatten()
    counts = torch.bincount(flat, minlength=cfg.codebook_size)
    p = counts[counts > 0].double() / flat.numel()
    perplexity = float(torch.exp(-(p * p.log()).sum()))
    per_token = counts[tokens]  # (h, w): uses of each cell's code in this image
    top = torch.argsort(counts, descending=True)[: min(16, int((counts > 0).sum()))]
    mse = float((recon - x[0].cpu().float()).square().mean())
    scale = max(1, 256 // cfg.image_size)
    return {
        "grid": [int(tokens.shape[0]), int(tokens.shape[1])],
        "tokens": tokens.tolist(),
        "token_uses": per_token.tolist(),
        "codebook_size": int(cfg.codebook_size),
        "distinct_codes": int((counts > 0).sum()),
        "perplexity": perplexity,
        "top_codes": [{"code": int(c), "count": int(counts[c])} for c in top],
        "mse": mse,
        "psnr": float(10 * math.log10(1.0 / max(mse, 1e-12))),
        "image_size": int(cfg.image_size),
        "input_png": png_data_uri(x[0].cpu(), scale),
        "reconstruction_png": png_data_uri(recon, scale),
    }


def classify_fewshot(clf: Any, support: list[Image.Image], labels: list[str], queries: list[Image.Image], names: list[str]) -> dict[str, Any]:
    """CAML's class probabilities for each query given the labelled support images."""
    from tessera.tokenizer.tokenizer import images_to_tensor

    if len(support) != len(labels):
        raise ServeError(422, f"{len(support)} support images but {len(labels)} labels: give one label per support image", "labels")
    if not queries:
        raise ServeError(422, "no query images: add at least one image to classify", "queries")
    classes = list(dict.fromkeys(labels))
    if len(classes) < 2:
        raise ServeError(422, f"the support needs at least 2 classes, got {len(classes)} ({', '.join(classes) or 'none'})", "labels")
    if len(classes) > clf.max_way:
        raise ServeError(422, f"{len(classes)} classes but this CAML handles at most {clf.max_way}", "labels")
    size = int(getattr(clf.extractor, "input_size", 32) or 32)
    with torch.inference_mode():
        s = images_to_tensor(support, size)
        q = images_to_tensor(queries, size)
        probs, order = clf.classify(s, labels, q)
    out = []
    for i, row in enumerate(probs):
        ranked = sorted(zip(order, row.tolist(), strict=True), key=lambda kv: -kv[1])
        out.append({"query": names[i], "prediction": ranked[0][0], "probabilities": {str(k): float(v) for k, v in ranked},
                    "thumbnail": png_data_uri(queries[i].resize((64, 64)))})
    return {"classes": [str(c) for c in order], "predictions": out, "support_size": len(support)}
