"""`docs/data.md` generated from the build manifests, so no count, hash or licence in it is typed by hand.

Axis legend: none (tables of counts).

Run `python -m tessera.data.report [--out docs/data.md]` or `tessera data report`; both build the default sets first
if they are not in the cache. Every registered source is listed, with the ones missing on the building machine marked,
so the document also shows what a pip-only build lacks.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.data._store import DatasetBuild
from tessera.data.sources import DEBIAN_PACKAGES, IMAGE_SOURCES

__all__ = ["render_report", "write_report", "main"]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _pct(counter: Counter, total: int) -> str:
    items = sorted(counter.items(), key=lambda kv: str(kv[0]))
    return ", ".join(f"{k}: {v} ({100 * v / total:.0f}%)" for k, v in items)


def _image_section(build: DatasetBuild) -> list[str]:
    m = build.manifest
    cfg = m["config"]
    res_list = cfg["resolutions"]
    used = {s["id"]: s for s in m["sources"]}
    lines = [
        "## Image set",
        "",
        f"Folder: `{build.path.name}` under the data cache. Arrays: `{{split}}_{{resolution}}.npy`, uint8 "
        "(N, H, W, 3), memory-mappable; `{split}_{resolution}_index.npy`, int32 (N, 5): source index, x0, y0, x1, y1 "
        "of each crop in the working copy of its source.",
        "",
        "How it is built (values from the manifest's config):",
        "",
        f"1. Each source is decoded (EXIF orientation applied, grayscale replicated to RGB) and downscaled so its "
        f"shorter side is at most {cfg['max_short_side']} px.",
        f"2. Crops are random squares with a side drawn log-uniformly between {cfg['min_scale']}x and "
        f"{cfg['max_scale']}x the resolution (capped by the image), resampled to the resolution with antialiased "
        "bicubic filtering. Quotas per source are proportional to its working area.",
        f"3. Flat crops (luminance standard deviation below {cfg['flat_std']} on the 0-255 scale) are rejected; the "
        "shortfall of mostly-flat sources is cut from the others.",
        "4. Train and val never share a source image: each source's split is fixed in `tessera/data/sources.py`, "
        "and val consists of whole held-out images.",
        f"5. Seed {cfg['seed']}: the same sources and seed give byte-identical arrays (same NumPy and Pillow).",
        "",
        "### Counts",
        "",
    ]
    rows = []
    for split in ("train", "val"):
        n_src = sum(1 for s in m["sources"] if s["split"] == split)
        for res in res_list:
            f = m["files"][f"{split}_{res}"]
            rows.append([split, f"{res}x{res}", f"{f['shape'][0]:,}", n_src, f"`{f['sha256'][:16]}`"])
    lines += _table(["split", "resolution", "crops", "source images", "array sha256 (first 16)"], rows)
    lines += [
        "",
        f"Sources used: {len(m['sources'])} of {len(m['sources']) + len(m['missing_sources'])} registered"
        + (f"; missing on the building machine: {', '.join(s['id'] for s in m['missing_sources'])}."
           if m["missing_sources"] else " (all installed)."),
        "",
        "### Sources",
        "",
        "Crops are given as accepted / rejected-as-flat per resolution. `sha256` is the hash of the source file.",
        "",
    ]
    rows = []
    for src in IMAGE_SOURCES:
        rec = used.get(src.id)
        if rec is None:
            crops = "not installed"
            size = sha = "-"
        else:
            crops = "; ".join(
                f"{r}: {rec['crops'][str(r)]['accepted']} / {rec['crops'][str(r)]['rejected_flat']}" for r in res_list
            )
            size = f"{rec['size'][0]}x{rec['size'][1]}"
            sha = f"`{rec['sha256'][:12]}`"
        rows.append([f"`{src.id}`", f"{src.package}: `{src.path}`", src.kind, src.split, size, src.credit,
                     src.licence, crops, sha])
    lines += _table(["id", "package: file", "kind", "split", "size", "credit", "licence", "crops", "sha256"], rows)
    lines += ["", "### Licences", ""]
    by_licence: dict[str, list[str]] = {}
    for src in IMAGE_SOURCES:
        by_licence.setdefault(src.licence, []).append(src.id)
    for licence, ids in sorted(by_licence.items()):
        lines.append(f"- **{licence}** ({len(ids)}): {', '.join(ids)}")
    lines += ["", "Licence strings were read from:", ""]
    lines += [f"- {where}" for where in sorted({src.licence_from for src in IMAGE_SOURCES})]
    lines.append("")
    return lines


def _video_section(builds: Sequence[DatasetBuild]) -> list[str]:
    lines = [
        "## Video set",
        "",
        "Short clips of sprites (coloured shapes and bold glyphs with a black outline) moving in a straight line "
        "(left, right, up or down; slow or fast) over a static crop of the image set of the same split, with events "
        "(a sprite appearing after the start, a sprite disappearing) at distinct frames. Arrays: `{split}.npy`, uint8 "
        "(N, T, H, W, 3); metadata: `{split}.json`, one dict per clip (sprites with per-frame boxes, the time-ordered "
        "`events`, an English `description`).",
        "",
    ]
    if not builds:
        return lines + ["No video set was built for this report.", ""]
    rows = []
    for b in builds:
        m = b.manifest
        for split in ("train", "val"):
            meta = json.loads(b.file(f"{split}.json").read_text())
            sprites = Counter(len(c["sprites"]) for c in meta)
            events = Counter(len(c["events"]) for c in meta)
            directions = Counter(sp["direction"] for c in meta for sp in c["sprites"])
            rows.append([
                f"`{b.path.parent.name}/{b.path.name}`", split, f"{m['resolution']}x{m['resolution']}",
                m["num_frames"], f"{len(meta):,}", _pct(sprites, len(meta)), _pct(events, len(meta)),
                _pct(directions, sum(directions.values())), f"`{m['files'][split]['sha256'][:16]}`",
            ])
    lines += _table(["set", "split", "resolution", "frames", "clips", "sprites per clip", "events per clip",
                     "directions", "array sha256 (first 16)"], rows)
    vocab = builds[0].manifest["vocabulary"]
    lines += [
        "",
        f"Vocabulary: shapes {', '.join(vocab['shapes'])}; glyphs {''.join(vocab['glyphs'])}; colours "
        f"{', '.join(vocab['colours'])}; directions {', '.join(vocab['directions'])}; speeds "
        f"{', '.join(vocab['speeds'])}. Glyphs are drawn with DejaVu Sans Bold from matplotlib's wheel "
        "(Bitstream Vera / DejaVu licence). Other (resolution, frames) pairs are built on first use by "
        "`load_video_dataset`.",
        "",
    ]
    return lines


def render_report(images: DatasetBuild, videos: Sequence[DatasetBuild] = ()) -> str:
    """Markdown for `docs/data.md` from built data sets.

    Args:
        images: the image set build (its manifest is the source of every number).
        videos: video set builds, one per (resolution, frames).

    Returns:
        The document as a string.
    """
    m = images.manifest
    apt = " ".join(DEBIAN_PACKAGES)
    lines = [
        "# Embedded data sets",
        "",
        "<!-- Generated by `python -m tessera.data.report` (or `tessera data report`) from the build manifests. "
        "Do not edit by hand: rebuild and regenerate. -->",
        "",
        "Tessera's default image and video sets are built on the user's machine, offline and reproducibly, from real "
        "photographs and artwork that ship inside installable packages: the scikit-image and matplotlib wheels "
        f"(always present) and the Debian packages {', '.join(f'`{p}`' for p in DEBIAN_PACKAGES)} (optional). Nothing "
        "is downloaded at run time.",
        "",
        "## Build and rebuild",
        "",
        "```bash",
        f"sudo apt-get install -y {apt}   # optional: the full source set",
        "tessera data build                      # image set (32 and 64 px) and video set (32 px, 8 and 16 frames)",
        "tessera data build --only images --force  # rebuild, e.g. after installing the Debian packages",
        "tessera data info                       # paths and counts",
        "python -m tessera.data.report --out docs/data.md   # regenerate this page",
        "```",
        "",
        "Everything goes to `$TESSERA_CACHE/data/` (default `~/.cache/tessera/data/`); `--root DIR` puts it elsewhere. "
        "Source files are looked up in the installed packages, or in `$TESSERA_DATA_SOURCES` (folders laid out as "
        "`<folder>/<package>/<path>`). Without the Debian packages the builder uses what is present, warns once, "
        "records the missing sources in the manifest and still produces the requested number of crops (more, "
        "overlapping crops per image). In Python: `tessera.data.load_image_dataset(32, 'train')`, "
        "`tessera.data.load_video_dataset(32, 'train', num_frames=8)`; both build on first use.",
        "",
    ]
    lines += _image_section(images)
    lines += _video_section(videos)
    sw = m.get("software", {})
    lines += [
        "## Build environment of this report",
        "",
        f"NumPy {sw.get('numpy')}, Pillow {sw.get('pillow')}. Image set built in {m.get('build_seconds')} s"
        + "".join(f"; video `{b.path.name}` in {b.manifest.get('build_seconds')} s" for b in videos)
        + " (wall clock on the machine that generated this page).",
        "",
    ]
    return "\n".join(lines)


def write_report(
    out: str | os.PathLike[str] = "docs/data.md",
    *,
    root: str | os.PathLike[str] | None = None,
    source_dirs: Sequence[str | os.PathLike[str]] | None = None,
    image_config: Any = None,
    video_config: Any = None,
    progress: bool | None = None,
) -> Path:
    """Build the sets if needed, then write the report atomically.

    Args:
        out: output Markdown file.
        root: data folder (default `cache_dir("data")`).
        source_dirs: source lookup override.
        image_config: `ImageSetConfig` (None: default).
        video_config: `VideoSetConfig` (None: default).
        progress: progress bars (None: only on a terminal).

    Returns:
        The path written.
    """
    from tessera.data.images import build_image_dataset
    from tessera.data.video import build_video_dataset

    images = build_image_dataset(image_config, root=root, source_dirs=source_dirs, progress=progress)
    videos = build_video_dataset(video_config, image_config=image_config, root=root, source_dirs=source_dirs,
                                 progress=progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(render_report(images, videos))
    tmp.replace(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tessera.data.report [--out docs/data.md] [--root DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m tessera.data.report", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/data.md", help="Markdown file to write (default docs/data.md)")
    parser.add_argument("--root", default=None, help="data folder (default $TESSERA_CACHE/data)")
    args = parser.parse_args(argv)
    path = write_report(args.out, root=args.root)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
