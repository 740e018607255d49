"""Wall time of `tessera demo` per stage, from a cold stage cache and on a rerun (everything reused).

    python benchmarks/demo_time.py --profile quick        # ~2 min on 2 idle cores (more on a loaded machine)
    python benchmarks/demo_time.py --profile full

Runs the demo twice into a fresh folder (runs/demo_time/<profile>): the first run trains every stage (data sets
already built in the cache are reused, as on a user's second demo; the doc says which were), the second must reuse
every checkpoint. Writes docs/results/demo_time_<profile>.md and .json with the stage times, the machine, its load
average before and after, and the thread settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stage_times(folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for marker in sorted(folder.rglob("stage.json")):
        res = json.loads(marker.read_text())["result"]
        out[marker.parent.relative_to(folder).as_posix()] = {"seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick", choices=["quick", "full", "debug"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the existing .json (no runs)")
    args = ap.parse_args()
    json_path = ROOT / "docs" / "results" / f"demo_time_{args.profile}.json"
    if args.report_only:
        write_md(json.loads(json_path.read_text()))
        return 0
    import torch

    from tessera.icl.suite import SuiteConfig, suite_dir
    from tessera.recipes.demo import demo_profile, run_demo

    icl = demo_profile(args.profile).icl
    suite_cached = (suite_dir(SuiteConfig(system=icl.system, **icl.suite)) / "manifest.json").is_file()
    out = ROOT / "runs" / "demo_time" / args.profile
    if out.exists():
        shutil.rmtree(out)
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    run_demo(config=demo_profile(args.profile), seed=args.seed, out_dir=out, progress=False)
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = _stage_times(out / args.profile)
    t0 = time.perf_counter()
    run_demo(config=demo_profile(args.profile), seed=args.seed, out_dir=out, progress=False)
    rerun = time.perf_counter() - t0
    load_after = os.getloadavg()
    result = {
        "profile": args.profile, "cold_seconds": cold, "cold_cpu_seconds": cold_cpu, "rerun_seconds": rerun, "stages": stages,
        "load_average_before": load_before, "load_average_after": load_after,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    result["suite_cached_before"] = suite_cached
    write_md(result)
    return 0


def write_md(result: dict) -> None:
    from tessera.io import atomic_write_text

    profile, cold, cold_cpu, rerun = result["profile"], result["cold_seconds"], result["cold_cpu_seconds"], result["rerun_seconds"]
    cores = result["machine"].split(", ")[1]
    suite = {True: "was already in the cache", False: "was built by this run"}.get(result.get("suite_cached_before"),
                                                                                      "was built if it was not cached")
    md = [f"# `tessera demo` wall time, profile {profile!r}", "",
          f"Produced by `python benchmarks/demo_time.py --profile {profile}` on {result['machine']}, {result['date']}; "
          f"torch threads {result['torch_threads']}, OMP_NUM_THREADS {result['OMP_NUM_THREADS']}.", "",
          f"**The machine was shared**: 1-minute load average {result['load_average_before'][0]:.1f} before and "
          f"{result['load_average_after'][0]:.1f} after the run on {cores}, so these wall times are several times what an idle "
          "machine takes. Stage times include building data not yet in the cache: the few-shot suite and its feature "
          f"embeddings ({suite}) and the LM corpus (always built here: it is keyed by the newly trained tokenizer). The "
          "tokenizer's embedded image set was built before the run.", "",
          f"- first run (every stage trained): **{cold / 60:.1f} min wall** ({cold:.0f} s), "
          f"**{cold_cpu / 60:.1f} min of CPU time** ({cold_cpu:.0f} s, all threads)",
          f"- rerun (every stage reused): {rerun:.0f} s wall", "",
          "CPU time is the work done; it does not grow with other jobs' load the way wall time does. With one thread per "
          "process (OMP_NUM_THREADS=1) an idle machine needs about the CPU time in wall time; with torch's default two "
          "threads on two idle cores, somewhat less.", "",
          "| stage | wall (s) | CPU (s) |", "|---|---:|---:|"]
    md += [f"| {k} | {v['seconds']:.0f} | {v['cpu_seconds']:.0f} |" for k, v in result["stages"].items()]
    atomic_write_text(ROOT / "docs" / "results" / f"demo_time_{profile}.md", "\n".join(md) + "\n")
    atomic_write_text(ROOT / "docs" / "results" / f"demo_time_{profile}.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
