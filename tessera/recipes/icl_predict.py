"""`tessera icl predict`: classify a user's images from a folder of labelled examples, with no fine-tuning.

    tessera icl predict --support examples/ --query photos/ [--checkpoint DIR] [--format json|csv] [--output FILE]

`--support DIR` holds one subfolder per class (the folder names become the labels); `--query` takes folders (searched
recursively) and/or image files. Every query's predicted label and class probabilities are printed and saved
(`icl_predictions.json` / `.csv` by default). When the query folder itself has subfolders named like the support's
classes, they are taken as ground truth and the accuracy is reported too.

Images are read by the robust loader shared by all of Tessera (`tessera.data.load_image`: EXIF orientation,
transparency composited on white, 16-bit and CMYK converted, decompression bombs refused from the header). Errors
name the file or class: an empty class folder, more classes than the model supports, unreadable, truncated or
oversized images, a checkpoint that does not fit its extractor.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGE_EXTENSIONS", "scan_support", "scan_queries", "load_images", "predict_folders"]

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
     ".pbm", ".pnm", ".ico", ".tga", ".jp2", ".j2k", ".avif", ".qoi"}
)
MAX_PIXELS = 64 * 2**20  # the same cap as tessera.data's loader


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_support(root: str | Path) -> tuple[list[Path], list[str]]:
    """Image files and class names of a support folder (one subfolder per class, sorted by name).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: not a folder, no class subfolders, or a class folder without images (named in the message).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"support folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"--support must be a folder with one subfolder per class, got a file: {root}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root}: no class subfolders (put each class's images in its own subfolder)")
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        _log.warning("%s: ignoring %d file(s) outside class folders (%s)", root, len(loose), ", ".join(loose[:5]))
    files, labels = [], []
    for d in class_dirs:
        imgs = sorted(p for p in d.rglob("*") if p.is_file() and _is_image_name(p))
        if not imgs:
            others = [p.name for p in d.rglob("*") if p.is_file()]
            hint = f" (found non-image files: {', '.join(others[:5])})" if others else ""
            raise ValueError(f"class {d.name!r} has no images: {d}{hint}")
        files += imgs
        labels += [d.name] * len(imgs)
    return files, labels


def scan_queries(items: list[str | Path]) -> tuple[list[Path], list[str | None]]:
    """Query image files (folders searched recursively, sorted) and, for files in a labelled subfolder, that label."""
    files: list[Path] = []
    truth: list[str | None] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"query path not found: {p}")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _is_image_name(f))
            if not found:
                raise ValueError(f"query folder {p} has no images")
            for f in found:
                files.append(f)
                rel = f.relative_to(p)
                truth.append(rel.parts[0] if len(rel.parts) > 1 else None)
        else:
            files.append(p)
            truth.append(None)
    if not files:
        raise ValueError("no query images given")
    return files, truth


def _load_rgb(path: Path):
    """Load an image as 8-bit RGB PIL with clear errors: `tessera.data.load_image` when available."""
    try:
        from tessera.data import load_image
    except ImportError:
        return _fallback_load_rgb(path)
    return load_image(path, max_pixels=MAX_PIXELS)


def _fallback_load_rgb(path: Path):
    """A minimal robust loader, used only when `tessera.data` is not installed (same errors and conversions)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        img = Image.open(path)
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path}: not an image file") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: image is too large to decode safely (decompression bomb guard)") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the image header ({exc})") from exc
    with img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"{path}: {w}x{h} = {w * h:,} pixels exceeds the limit of {MAX_PIXELS:,} (possible decompression bomb)")
        try:
            img.load()
        except Exception as exc:
            raise ValueError(f"{path}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            scale = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), "L")
        if img.mode == "P" or "A" in img.mode or "transparency" in img.info:
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        return img.convert("RGB").copy()


def load_images(paths: list[Path], size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """Load images as float (B, 3, S, S) in [0, 1], S = ceil(size / crop_pct): shorter side resized, centre-cropped.

    The extractor then crops its `size` centre, so the whole chain equals the timm/CLIP evaluation transform.
    """
    from PIL import Image

    side = int(math.ceil(size / crop_pct))
    out = torch.empty(len(paths), 3, side, side)
    for i, p in enumerate(paths):
        img = _load_rgb(p)
        w, h = img.size
        s = side / min(w, h)
        img = img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC, reducing_gap=None)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return out


@dataclass
class PredictResult:
    files: list[Path]
    classes: list[str]
    probs: np.ndarray  # (Q, W)
    truth: list[str | None]

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.probs.argmax(1)]

    def accuracy(self) -> float | None:
        known = [(p, t) for p, t in zip(self.labels, self.truth, strict=True) if t is not None and t in self.classes]
        return None if not known else float(np.mean([p == t for p, t in known]))

    def rows(self) -> list[dict]:
        return [
            {"file": str(f), "label": lab,
             "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, pr, strict=True)},
             **({"truth": t} if t else {})}
            for f, lab, pr, t in zip(self.files, self.labels, self.probs, self.truth, strict=True)
        ]

    def to_json(self, meta: dict) -> str:
        return json.dumps({**meta, "classes": self.classes, "accuracy": self.accuracy(), "predictions": self.rows()}, indent=2) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "label", *[f"p({c})" for c in self.classes]])
        for f, lab, pr in zip(self.files, self.labels, self.probs, strict=True):
            w.writerow([str(f), lab, *[f"{float(v):.6f}" for v in pr]])
        return buf.getvalue()


def predict_folders(support: str | Path, queries: list[str | Path], checkpoint: str | Path | None = None, attention: str | None = None) -> tuple[PredictResult, dict]:
    """Run the whole `predict` command without printing: returns the result and metadata for the report."""
    from tessera.icl.predict import FewShotClassifier

    s_files, s_labels = scan_support(support)
    q_files, truth = scan_queries(list(queries))
    clf = FewShotClassifier.from_pretrained(checkpoint, attention=attention)
    n_classes = len(dict.fromkeys(s_labels))
    if n_classes > clf.max_way:
        classes = list(dict.fromkeys(s_labels))
        raise ValueError(
            f"{support}: {n_classes} classes ({', '.join(classes[:10])}{', ...' if n_classes > 10 else ''}) but the model "
            f"supports at most {clf.max_way}; use fewer classes or a checkpoint trained with a larger max_way"
        )
    ext = clf.extractor
    size = ext.input_size or 224
    s_img = load_images(s_files, size, ext.crop_pct)
    q_img = load_images(q_files, size, ext.crop_pct)
    probs, classes = clf.classify(s_img, s_labels, q_img)
    meta = {
        "support": str(support),
        "checkpoint": str(checkpoint) if checkpoint else "default (tessera/assets/icl/caml-s)",
        "extractor": ext.name,
        "attention": attention or clf.model.cfg.attention,
        "support_images": len(s_files),
    }
    return PredictResult(q_files, [str(c) for c in classes], probs, truth), meta
