"""`tessera data build|info|report`: build the embedded image and video sets, show where they are, write docs/data.md.

Axis legend: none (command-line plumbing).

    tessera data build [--only images|video] [--force] [--root DIR] [--sources DIR] [--config X.yaml] [--debug] [a.b=c]
    tessera data info  [--root DIR] [--sources DIR] [--config X.yaml] [--debug] [a.b=c]
    tessera data report [--out docs/data.md] [--root DIR] [--sources DIR] [--config X.yaml] [--debug] [a.b=c]

Expected: `tessera data build` takes ~30 s on 2 cores with the Debian packages installed and prints the counts.
The config has two sections, `images` (`ImageSetConfig`) and `video` (`VideoSetConfig`); `--debug` starts from a tiny
twin that builds in a few seconds, and overrides such as `images.train_crops=1000 video.resolutions=[32,64]` apply on
top. Imports of torch and the data package happen inside the handlers so `tessera --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "data_config_class", "debug_config"]


def data_config_class() -> type:
    """The `DataConfig` dataclass (`images`, `video` sections), defined lazily to keep torch out of CLI start-up."""
    global _DATA_CONFIG
    if _DATA_CONFIG is None:
        from dataclasses import field, make_dataclass

        from tessera.data import ImageSetConfig, VideoSetConfig

        # make_dataclass keeps real types in __annotations__ (this module's are strings), which from_dict resolves.
        _DATA_CONFIG = make_dataclass(
            "DataConfig",
            [("images", ImageSetConfig, field(default_factory=ImageSetConfig)),
             ("video", VideoSetConfig, field(default_factory=VideoSetConfig))],
        )
        _DATA_CONFIG.__doc__ = "Both embedded sets: the image set and the video set drawn over it."
    return _DATA_CONFIG


_DATA_CONFIG: Any = None


def debug_config() -> dict[str, Any]:
    """The debug twin as a mapping: a few hundred crops and a few dozen clips, built in seconds on a CPU."""
    return {
        "images": {"resolutions": [32], "train_crops": 256, "val_crops": 64, "max_short_side": 256},
        "video": {"resolutions": [32], "num_frames": [8], "train_clips": 32, "val_clips": 8},
    }


def _load(args: argparse.Namespace) -> Any:
    from tessera.config import apply_overrides, from_dict, load_config, parse_overrides, to_dict

    cls = data_config_class()
    if args.debug:
        if args.config is not None:
            raise ValueError("--debug and --config are exclusive")
        data = to_dict(cls())
        _deep_update(data, debug_config())
        apply_overrides(data, parse_overrides(args.overrides))
        return from_dict(cls, data)
    return load_config(cls, args.config, args.overrides)


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=None, help="data folder (default $TESSERA_CACHE/data)")
    p.add_argument("--config", type=Path, default=None, help="YAML with `images:` and `video:` sections")
    p.add_argument("--debug", action="store_true", help="start from the tiny debug config")
    p.add_argument("--sources", action="append", default=None, metavar="DIR",
                   help="look for source files in DIR/<package>/<path> instead of the installed packages "
                        "(repeatable; default $TESSERA_DATA_SOURCES or the packages)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. images.train_crops=1000")


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _build(args: argparse.Namespace) -> int:
    import time

    from tessera.data import build_image_dataset, build_video_dataset

    cfg = _load(args)
    sources = args.sources or None
    t0 = time.perf_counter()
    if args.only in (None, "images"):
        b = build_image_dataset(cfg.images, root=args.root, source_dirs=sources, force=args.force)
        _print_images(b)
    if args.only in (None, "video"):
        for b in build_video_dataset(cfg.video, image_config=cfg.images, root=args.root, source_dirs=sources,
                                     force=args.force):
            _print_video(b)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _print_images(b: Any) -> None:
    m = b.manifest
    state = "built" if b.built else "cached"
    print(f"images ({state}): {b.path}")
    print(f"  sources: {len(m['sources'])} used, {len(m['missing_sources'])} missing"
          + (f" ({', '.join(s['id'] for s in m['missing_sources'])})" if m["missing_sources"] else ""))
    for key, f in m["files"].items():
        if key.endswith("_index"):
            continue
        size = (b.path / f["file"]).stat().st_size
        print(f"  {f['file']:<14} {f['shape'][0]:>7,} x {f['shape'][1]}x{f['shape'][2]}  {_fmt_bytes(size)}")


def _print_video(b: Any) -> None:
    m = b.manifest
    state = "built" if b.built else "cached"
    print(f"video {m['resolution']}px x {m['num_frames']} frames ({state}): {b.path}")
    for split in ("train", "val"):
        f = m["files"][split]
        size = (b.path / f["file"]).stat().st_size
        print(f"  {f['file']:<14} {f['shape'][0]:>7,} clips  {_fmt_bytes(size)}")


def _info(args: argparse.Namespace) -> int:
    from tessera.data import available_sources, image_set_dir, video_set_dir
    from tessera.data._store import DatasetBuild, read_manifest

    cfg = _load(args)
    found, missing = available_sources(args.sources or None, cfg.images.sources or None)
    print(f"sources installed: {len(found)} of {len(found) + len(missing)}"
          + (f"; missing packages: {', '.join(sorted({s.package for s in missing}))}" if missing else ""))
    folder = image_set_dir(cfg.images, args.root)
    manifest = read_manifest(folder)
    if manifest is None:
        print(f"images: not built ({folder}); run `tessera data build`")
    else:
        _print_images(DatasetBuild(folder, manifest, built=False))
    vfolder = video_set_dir(cfg.video, cfg.images, args.root)
    combos = sorted(p for p in vfolder.glob("r*_t*") if read_manifest(p) is not None) if vfolder.is_dir() else []
    if not combos:
        print(f"video: not built ({vfolder}); run `tessera data build`")
    for p in combos:
        _print_video(DatasetBuild(p, read_manifest(p) or {}, built=False))
    return 0


def _report(args: argparse.Namespace) -> int:
    from tessera.data.report import write_report

    cfg = _load(args)
    path = write_report(args.out, root=args.root, source_dirs=args.sources or None, image_config=cfg.images,
                        video_config=cfg.video)
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `tessera data build|info|report`."""
    data = subparsers.add_parser("data", help="embedded image/video sets: build, info, report",
                                 description=__doc__.split("\n")[0])
    verbs = data.add_subparsers(dest="data_verb", metavar="<verb>")
    data.set_defaults(handler=lambda _args: data.print_help() or 2)

    build = verbs.add_parser("build", help="build (or find cached) the embedded sets")
    build.add_argument("--only", choices=["images", "video"], default=None, help="build only one of the sets")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    _add_common(build)
    build.set_defaults(handler=_build)

    info = verbs.add_parser("info", help="print paths and counts of the built sets")
    _add_common(info)
    info.set_defaults(handler=_info)

    report = verbs.add_parser("report", help="write docs/data.md from the manifests (builds the sets if needed)")
    report.add_argument("--out", default="docs/data.md", help="output Markdown file")
    _add_common(report)
    report.set_defaults(handler=_report)
