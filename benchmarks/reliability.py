"""What Tessera does with bad input, damaged files and killed runs: a table of everything tried and what happened.

Run:    PYTHONPATH=. python benchmarks/reliability.py            (a few minutes on 2 CPU cores)
        PYTHONPATH=. python benchmarks/reliability.py --quick    (fewer generated cases and kills; about a minute)
        PYTHONPATH=. python benchmarks/reliability.py --render-only   (rewrite the pages from the saved JSON)
Writes: docs/reliability.md (the whole page), docs/results/reliability.md (the tables) and docs/results/reliability.json

Four parts, each counted per entry point:
1. Catalogue: every hand-written bad input of tests/reliability_cases.py (NaN/Inf, wrong rank or dtype, empty
   batches, out-of-range ids, oversized codebooks, corrupt/truncated/huge images, unknown config keys and wrong
   types, mismatched checkpoints). Pass = the expected exception type with a message naming the problem.
2. Generated cases: hypothesis draws random inputs (valid and invalid: random shapes, dtypes, value ranges, NaN/Inf
   at random places, random ids) for each public entry point. Pass = either a well-formed result (right shape and
   dtype, finite) or a ValueError/TypeError with a message; fail = any other exception, or a NaN/ill-shaped result.
3. Fault injections: checkpoints damaged at random (truncated to a random length, a random byte flipped, a file or
   the manifest deleted, a state file emptied, a stale temporary folder, a crash in the middle of a save) must fall
   back to the previous good checkpoint with a warning naming the damaged file; model folders with weights truncated
   at a random length must raise an error naming the file.
4. Kills: a real trainer (tests/train/trainer_worker.py) is killed with SIGKILL at a random step and delay, some of
   the runs also get their newest checkpoint truncated, and the resumed run's final weights must equal the
   uninterrupted run's bit for bit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability_cases import _objects, all_cases, run_case  # noqa: E402


# -- 1. the catalogue -----------------------------------------------------------------------------------------------
def run_catalogue() -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"cases": 0, "passed": 0, "problems": set(), "failures": []})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in all_cases():
            out = run_case(case)
            r = rows[case.entry]
            r["cases"] += 1
            r["passed"] += out.ok
            r["problems"].add(case.problem)
            if not out.ok:
                r["failures"].append(f"{case.name}: {out.detail}")
    return {k: {**v, "problems": sorted(v["problems"])} for k, v in sorted(rows.items())}


# -- 2. generated cases -----------------------------------------------------------------------------------------------
def _random_tensor(data, shape_choices: list[tuple[int, ...]], *, ints: bool = False, high: int = 10, valid: bool = False) -> torch.Tensor:
    """A tensor of a drawn shape and dtype, with values in a drawn range and maybe a NaN/Inf at a drawn place.

    With `valid`, the first shape, a standard dtype (float32 / int64) and in-range values are used, so about half
    of the generated calls exercise the normal path and half the error paths.
    """
    from hypothesis import strategies as st

    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    if valid:
        if ints:
            return torch.randint(0, high, shape_choices[0], generator=g)
        return torch.rand(shape_choices[0], generator=g)
    shape = data.draw(st.sampled_from(shape_choices))
    dtypes = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]
    dtype = data.draw(st.sampled_from(dtypes if not ints else [torch.int64, torch.int32, torch.float32, torch.bool]))
    if dtype.is_floating_point:
        scale = data.draw(st.sampled_from([1.0, 1e-6, 1e4]))
        x = torch.rand(shape, generator=g).mul(scale).to(dtype)
        poison = data.draw(st.sampled_from([None, None, float("nan"), float("inf"), -1.0, 2.0]))
        if poison is not None and x.numel():
            x.view(-1)[data.draw(st.integers(0, 10**6)) % x.numel()] = poison
    elif dtype == torch.bool:
        x = torch.rand(shape, generator=g) > 0.5
    elif dtype == torch.uint8:
        x = torch.randint(0, 255, shape, generator=g, dtype=torch.uint8)
    else:
        lo = data.draw(st.sampled_from([0, 0, -2]))
        hi = data.draw(st.sampled_from([high, high, high + 5]))
        x = torch.randint(lo, max(lo + 1, hi), shape, generator=g).to(dtype)
    return x


def _well_formed(out: Any) -> bool:
    tensors = [out] if isinstance(out, torch.Tensor) else [v for v in (out if isinstance(out, (tuple, list)) else []) if isinstance(v, torch.Tensor)]
    return all(not t.is_floating_point() or bool(torch.isfinite(t).all()) or bool((t == float("-inf")).any()) for t in tensors)


def _fuzz(name: str, n: int, draw_call: Callable[[Any], Callable[[], Any]], check: Callable[[Any], bool] = _well_formed) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    counts = {"generated": 0, "accepted": 0, "refused": 0, "failed": 0, "failures": []}

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        call = draw_call(data)
        counts["generated"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = call()
        except (ValueError, TypeError) as exc:
            if str(exc).strip():
                counts["refused"] += 1
            else:
                counts["failed"] += 1
                counts["failures"].append(f"empty {type(exc).__name__} message")
            return
        except Exception as exc:  # noqa: BLE001 - the finding
            counts["failed"] += 1
            counts["failures"].append(f"{type(exc).__name__}: {str(exc)[:120]}")
            return
        if check(out):
            counts["accepted"] += 1
        else:
            counts["failed"] += 1
            counts["failures"].append("ill-formed result (NaN or wrong shape)")

    run()
    counts["failures"] = sorted(set(counts["failures"]))[:5]
    return {"entry": name, **counts}


def run_generated(n: int) -> list[dict[str, Any]]:
    from hypothesis import strategies as st

    from tessera.icl import sample_episode
    from tessera.quantize import nearest_codes

    o = _objects()
    vq, tok, caml, dec, proc = o["vq"], o["tok"], o["caml"], o["dec"], o["proc"]
    vocab = o["vocab"].size
    results = []

    def vq_call(data):
        v = data.draw(st.booleans())
        x = _random_tensor(data, valid=v, shape_choices=[(2, 4, 8), (1, 8, 3, 3), (0, 4, 8), (8,), (2, 4, 7), (1, 1, 8)])
        return lambda: vq(x)

    results.append(_fuzz("quantize.VectorQuantizer", n, vq_call, lambda out: bool(torch.isfinite(out.quantized).all())))

    def nn_call(data):
        v = data.draw(st.booleans())
        x = _random_tensor(data, [(4, 8), (0, 8), (4, 7), (8,)], valid=v)
        cb = _random_tensor(data, [(16, 8), (0, 8), (1, 8)], valid=v)
        return lambda: nearest_codes(x, cb)

    results.append(_fuzz("quantize.nearest_codes", n, nn_call))

    def enc_call(data):
        v = data.draw(st.booleans())
        x = _random_tensor(data, valid=v, shape_choices=[(1, 3, 16, 16), (2, 3, 16, 16), (0, 3, 16, 16), (3, 16, 16), (1, 1, 16, 16), (1, 3, 17, 17), (16, 16)])
        return lambda: tok.encode(x)

    results.append(_fuzz("tokenizer.ImageTokenizer.encode", n, enc_call, lambda out: out.dtype == torch.long and int(out.min()) >= 0 and int(out.max()) < 32))

    def dec_call(data):
        v = data.draw(st.booleans())
        x = _random_tensor(data, [(1, 4, 4), (2, 4, 4), (0, 4, 4), (4, 4), (1, 16)], ints=True, high=32, valid=v)
        return lambda: tok.decode(x)

    results.append(_fuzz("tokenizer.ImageTokenizer.decode", n, dec_call, lambda out: bool(torch.isfinite(out).all()) and out.min() >= 0 and out.max() <= 1))

    def caml_call(data):
        v = data.draw(st.booleans())
        s = _random_tensor(data, [(1, 5, 16), (2, 5, 16), (1, 0, 16), (5, 16), (1, 5, 15)], valid=v)
        lab = _random_tensor(data, [(1, 5), (2, 5), (5,), (1, 3)], ints=True, high=5, valid=v)
        q = _random_tensor(data, [(1, 3, 16), (2, 3, 16), (3, 16), (1, 0, 16)], valid=v)
        return lambda: caml(s, lab, q)

    def caml_ok(out) -> bool:
        way = out.way.view(-1, 1, 1)
        within = torch.arange(out.logits.shape[-1]).view(1, 1, -1) < way
        return bool(torch.isfinite(out.logits[within.expand_as(out.logits)]).all())

    results.append(_fuzz("icl.CAML", n, caml_call, caml_ok))

    def ep_call(data):
        sizes = data.draw(st.lists(st.integers(0, 8), min_size=0, max_size=6))
        starts = np.cumsum([0, *sizes])
        classes = [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
        if data.draw(st.booleans()):  # a shape the classes can serve
            shot = data.draw(st.integers(1, 3))
            classes += [np.arange(100 + 10 * i, 105 + 10 * i) for i in range(3)]
            way, query = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 2))
        else:
            way, shot, query = data.draw(st.integers(-1, 6)), data.draw(st.integers(-1, 4)), data.draw(st.integers(-1, 4))
        seed = data.draw(st.integers(0, 2**16))
        return lambda: sample_episode(classes, way, shot, query, np.random.default_rng(seed))

    results.append(_fuzz("icl.sample_episode", n, ep_call, lambda ep: len(ep.support) == len(ep.support_labels)))

    def lm_call(data):
        v = data.draw(st.booleans())
        ids = _random_tensor(data, [(1, 8), (2, 5), (0, 8), (1, 0), (8,), (1, 600)], ints=True, high=vocab, valid=v)
        return lambda: dec(ids)

    results.append(_fuzz("lm.Decoder.forward", n, lm_call, lambda out: bool(torch.isfinite(out.logits).all())))

    def proc_call(data):
        items = []
        for _ in range(data.draw(st.integers(0, 3))):
            if data.draw(st.booleans()):
                items.append(data.draw(st.text(max_size=20)))
            else:
                items.append(_random_tensor(data, [(3, 16, 16), (3, 24, 20), (1, 16, 16), (16, 16), (4, 16, 16)],
                                            valid=data.draw(st.booleans())))
        return lambda: proc.encode(items)

    results.append(_fuzz("lm.Processor.encode", n, proc_call, lambda enc: all(0 <= t < vocab for t in enc.ids)))

    def pdec_call(data):
        ids = data.draw(st.lists(st.integers(-3, vocab + 3), max_size=40))
        return lambda: proc.decode(ids)

    results.append(_fuzz("lm.Processor.decode", n, pdec_call, lambda out: isinstance(out, list)))
    return results


# -- 3. fault injections ----------------------------------------------------------------------------------------------
def _damage(folder: Path, kind: str, rng: random.Random) -> Path:
    """Damage one file of a checkpoint folder; returns the damaged path."""
    target = folder / rng.choice(["model.safetensors", "optimizer.safetensors", "state.json"])
    if kind == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: rng.randrange(0, len(data))])
    elif kind == "flip":
        data = bytearray(target.read_bytes())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    elif kind == "delete_file":
        target.unlink()
    elif kind == "delete_manifest":
        target = folder / "manifest.json"
        target.unlink()
    elif kind == "empty_state":
        target = folder / "state.json"
        target.write_bytes(b"")
    return target


def run_faults(n: int, seed: int = 0) -> list[dict[str, Any]]:
    import tessera.train.checkpoint as ckpt_mod
    from tessera.lm.pretrained import load_pretrained
    from tessera.tokenizer import ImageTokenizer

    rng = random.Random(seed)
    out = []
    work = Path(tempfile.mkdtemp(prefix="tessera-faults-"))
    state = {"w": torch.randn(64, 64), "b": torch.randn(64)}

    def save(root: Path, step: int) -> Path:
        return ckpt_mod.save_checkpoint(root, step, {"model": state, "optimizer": {"m": torch.randn(64, 64)}}, {"note": step}, keep=2)

    for kind in ["truncate", "flip", "delete_file", "delete_manifest", "empty_state"]:
        ok, fails = 0, []
        for i in range(n):
            root = work / f"{kind}-{i}"
            save(root, 1)
            damaged = _damage(save(root, 2), kind, rng)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = ckpt_mod.load_latest(root)
            named = any(str(damaged) in str(w.message) or str(damaged.parent) in str(w.message) for w in caught)
            if got is not None and got.step == 1 and named:
                ok += 1
            else:
                fails.append(f"trial {i}: step {None if got is None else got.step}, warned about the file: {named}")
        out.append({"target": "train checkpoint", "fault": kind, "trials": n, "passed": ok, "failures": fails[:3]})

    ok, fails = 0, []
    for i in range(n):  # a crash at a random point of a save: the previous checkpoint must stay loadable
        root = work / f"crash-{i}"
        save(root, 1)
        calls = {"n": 0}
        crash_at = rng.randrange(1, 6)
        real = ckpt_mod._fsync_file

        def flaky(path, real=real, calls=calls, crash_at=crash_at):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise OSError("simulated power loss")
            return real(path)

        ckpt_mod._fsync_file = flaky
        try:
            save(root, 2)
        except OSError:
            pass
        finally:
            ckpt_mod._fsync_file = real
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = ckpt_mod.load_latest(root)
        if got is not None and got.step in (1, 2) and torch.equal(got.tensors["model"]["w"], state["w"]):
            ok += 1
        else:
            fails.append(f"trial {i}: crash at fsync {crash_at} left {None if got is None else got.step}")
    out.append({"target": "train checkpoint", "fault": "crash during save", "trials": n, "passed": ok, "failures": fails[:3]})

    o = _objects()
    for target, folder, load in [("tokenizer folder", o["root"] / "tokenizer", ImageTokenizer.from_pretrained),
                                 ("lm folder", o["root"] / "lm", load_pretrained)]:
        ok, fails = 0, []
        for i in range(n):
            dst = work / f"{target.replace(' ', '_')}-{i}"
            shutil.copytree(folder, dst)
            w = dst / "model.safetensors"
            data = w.read_bytes()
            w.write_bytes(data[: rng.randrange(0, len(data))])
            try:
                load(dst)
                fails.append(f"trial {i}: loaded a truncated file")
            except (ValueError, OSError) as exc:
                if "model.safetensors" in str(exc):
                    ok += 1
                else:
                    fails.append(f"trial {i}: message without the file: {str(exc)[:100]}")
            except Exception as exc:  # noqa: BLE001
                fails.append(f"trial {i}: {type(exc).__name__}: {str(exc)[:100]}")
        out.append({"target": target, "fault": "weights truncated at a random length", "trials": n, "passed": ok, "failures": fails[:3]})
    shutil.rmtree(work, ignore_errors=True)
    return out


# -- 4. kills ----------------------------------------------------------------------------------------------------------
def run_kills(plan: list[tuple[str, int, bool]]) -> list[dict[str, Any]]:
    from safetensors.torch import load_file

    from tests.train.trainer_worker import worker_cmd

    steps = {"tokenizer": 12, "icl": 10, "lm": 8}  # longer than the CI tests' runs: more steps to land a kill in

    work = Path(tempfile.mkdtemp(prefix="tessera-kills-"))
    from tessera.tokenizer import ImageTokenizer, TokenizerConfig

    torch.manual_seed(0)
    ImageTokenizer(TokenizerConfig.from_name("vqvae-debug")).save_pretrained(work / "image_tokenizer")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TESSERA_CACHE": str(work / "cache"),
           "TESSERA_TEST_TOKENIZER": str(work / "image_tokenizer")}
    every = ["train.checkpoint_every=1", "train.keep_checkpoints=2"]

    def run(part: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        cmd = worker_cmd(part, run_dir, 1, *every, f"train.steps={steps[part]}", *extra)
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    refs: dict[str, dict[str, torch.Tensor]] = {}
    rows = []
    for i, (part, seed, truncate) in enumerate(plan):
        if part not in refs:
            p = run(part, work / f"ref-{part}")
            if p.returncode != 0:
                raise RuntimeError(f"reference {part} run failed: {p.stderr[-2000:]}")
            refs[part] = load_file(str(work / f"ref-{part}" / "rank0.safetensors"))
        rng = random.Random(seed)
        step = rng.randint(3 if truncate else 1, steps[part] - 2)  # truncation needs two complete checkpoints before
        delay = rng.uniform(0.0, 0.15)
        run_dir = work / f"kill-{i}"
        killed = run(part, run_dir, "--kill-at", f"{step}:{delay:.3f}")
        row = {"trainer": part, "seed": seed, "kill_step": step, "delay_s": round(delay, 3), "truncated": truncate,
               "killed": killed.returncode == -signal.SIGKILL}
        if truncate:
            newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors"
            newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
        resumed = run(part, run_dir, "--resume")
        row["resumed"] = resumed.returncode == 0
        row["warned"] = (not truncate) or ("skipping checkpoint" in resumed.stderr and "using the last good checkpoint" in resumed.stderr)
        if row["resumed"]:
            final = load_file(str(run_dir / "rank0.safetensors"))
            row["bitwise_equal"] = final.keys() == refs[part].keys() and all(torch.equal(final[k], v) for k, v in refs[part].items())
        else:
            row["bitwise_equal"] = False
            row["error"] = resumed.stderr[-300:]
        row["passed"] = row["killed"] and row["resumed"] and row["warned"] and row["bitwise_equal"]
        rows.append(row)
        print(f"  kill {i + 1}/{len(plan)}: {part} step {step} +{delay:.3f}s truncate={truncate} -> {'pass' if row['passed'] else 'FAIL'}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


# -- report ----------------------------------------------------------------------------------------------------------
def _tables(res: dict[str, Any]) -> str:
    lines = ["### 1. Catalogue of bad inputs (tests/reliability_cases.py)", "",
             "| entry point | cases | problems covered | clear error | failed |", "|---|---:|---|---:|---:|"]
    for entry, r in res["catalogue"].items():
        lines.append(f"| `{entry}` | {r['cases']} | {', '.join(r['problems'])} | {r['passed']} | {r['cases'] - r['passed']} |")
    tot = sum(r["cases"] for r in res["catalogue"].values())
    ok = sum(r["passed"] for r in res["catalogue"].values())
    lines += [f"| **all** | **{tot}** | | **{ok}** | **{tot - ok}** |", ""]
    lines += ["### 2. Generated cases (hypothesis, valid and invalid inputs)", "",
              "| entry point | generated | well-formed result | refused with a clear error | failed |", "|---|---:|---:|---:|---:|"]
    for r in res["generated"]:
        lines.append(f"| `{r['entry']}` | {r['generated']} | {r['accepted']} | {r['refused']} | {r['failed']} |")
    g = res["generated"]
    lines += [f"| **all** | **{sum(r['generated'] for r in g)}** | **{sum(r['accepted'] for r in g)}** | "
              f"**{sum(r['refused'] for r in g)}** | **{sum(r['failed'] for r in g)}** |", ""]
    lines += ["### 3. Fault injections", "", "| target | fault | trials | handled | failed |", "|---|---|---:|---:|---:|"]
    for r in res["faults"]:
        lines.append(f"| {r['target']} | {r['fault']} | {r['trials']} | {r['passed']} | {r['trials'] - r['passed']} |")
    lines += ["", "Handled: a damaged checkpoint is skipped with a warning naming the damaged file and the previous one is "
              "loaded; a crash during a save leaves a loadable checkpoint; a truncated model folder raises an error naming "
              "`model.safetensors`.", ""]
    lines += ["### 4. Kills (SIGKILL at a random step and delay, then `--resume`)", "",
              "| trainer | seed | killed at step (+delay) | newest checkpoint truncated | killed | resumed | warned about the damaged file | final weights bitwise equal |",
              "|---|---:|---|---|---|---|---|---|"]
    yn = lambda b: "yes" if b else "NO"  # noqa: E731
    for r in res["kills"]:
        lines.append(f"| {r['trainer']} | {r['seed']} | {r['kill_step']} (+{r['delay_s']} s) | {'yes' if r['truncated'] else 'no'} | "
                     f"{yn(r['killed'])} | {yn(r['resumed'])} | {yn(r['warned']) if r['truncated'] else 'n/a'} | {yn(r['bitwise_equal'])} |")
    k = res["kills"]
    lines += ["", f"{sum(r['passed'] for r in k)} of {len(k)} kills passed.", ""]
    fails = [f"- catalogue `{e}`: {f}" for e, r in res["catalogue"].items() for f in r["failures"]]
    fails += [f"- generated `{r['entry']}`: {f}" for r in res["generated"] for f in r["failures"]]
    fails += [f"- fault {r['target']} / {r['fault']}: {f}" for r in res["faults"] for f in r["failures"]]
    fails += [f"- kill {r['trainer']} seed {r['seed']}: {r.get('error', 'see JSON')}" for r in res["kills"] if not r["passed"]]
    lines += ["### Failures", ""] + (fails or ["None."]) + [""]
    return "\n".join(lines)


def _page(res: dict[str, Any], tables: str) -> str:
    m = res["meta"]
    return f"""# Reliability: bad input, damaged files, killed runs

Tessera answers bad input with an error that names the problem, never loses a finished checkpoint, and resumes a
killed run to the same weights. This page is the record of what was tried and what happened; it is written by
`benchmarks/reliability.py` (do not edit by hand).

**How it was produced:** `{m['command']}` on {m['date']}, {m['machine']} ({m['cpus']} CPU cores, torch {m['torch']},
Python {m['python']}); profile `{m['profile']}` ({m['seconds']:.0f} s). The machine was shared with other jobs
(load average {m['load']}), which affects only the duration. JSON: `docs/results/reliability.json`.

What the four parts do (details in the script's docstring):
1. **Catalogue**: hand-written bad inputs for every public entry point (`tests/reliability_cases.py`; each is also
   a test in `tests/test_reliability.py`). Pass: the expected exception type with a message naming the argument,
   file, key or range at fault.
2. **Generated cases**: hypothesis draws random inputs, valid and invalid (shapes, dtypes, value ranges, NaN/Inf at
   random places, random ids). Pass: a well-formed result (finite, right shape and range) or a `ValueError` /
   `TypeError` with a message. Fail: any other exception, or a NaN / ill-formed result.
3. **Fault injections**: checkpoints and model folders damaged at random.
4. **Kills**: real trainers (tokenizer, CAML, LM on shrunk debug configs, checkpoint after every step) killed with
   SIGKILL at a random step and delay, sometimes with the newest checkpoint truncated afterwards; the resumed run must
   end with the uninterrupted run's weights bit for bit (every operation of these trainers is deterministic on CPU).

The same guarantees are tested in CI: `tests/test_reliability.py`, `tests/*/test_properties.py`,
`tests/lm/test_processor_properties.py`, `tests/test_no_pickle.py` (no pickle loads of user files anywhere),
`tests/train/test_checkpoint.py`, `tests/train/test_crash_trainers.py` and `tests/train/test_distributed_trainers.py`.

## Results

{tables}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer generated cases, trials and kills")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="docs folder to write into")
    ap.add_argument("--render-only", action="store_true", help="rewrite the pages from the saved JSON, running nothing")
    args = ap.parse_args()
    if args.render_only:
        res = json.loads((Path(args.out) / "results" / "reliability.json").read_text())
        _write(res, Path(args.out))
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    n_gen, n_fault = (40, 8) if args.quick else (200, 30)
    kills = ([("tokenizer", 0, False), ("tokenizer", 1, True), ("lm", 2, True)] if args.quick else
             [("tokenizer", s, s % 2 == 1) for s in range(6)] + [("icl", 6, False), ("icl", 7, True), ("lm", 8, False), ("lm", 9, True)])
    print("1/4 catalogue", flush=True)
    catalogue = run_catalogue()
    print("2/4 generated cases", flush=True)
    generated = run_generated(n_gen)
    print("3/4 fault injections", flush=True)
    faults = run_faults(n_fault)
    print("4/4 kills", flush=True)
    killed = run_kills(kills)
    res = {
        "meta": {
            "command": "PYTHONPATH=. python benchmarks/reliability.py" + (" --quick" if args.quick else ""),
            "profile": "quick" if args.quick else "full",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.system()} {platform.machine()}",
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
            "seconds": time.perf_counter() - t0,
        },
        "catalogue": catalogue,
        "generated": generated,
        "faults": faults,
        "kills": killed,
    }
    _write(res, Path(args.out))


def _write(res: dict[str, Any], out: Path) -> None:
    from tessera.io import atomic_write_json, atomic_write_text

    tables = _tables(res)
    atomic_write_json(out / "results" / "reliability.json", res)
    atomic_write_text(out / "results" / "reliability.md", f"# Reliability results\n\nWritten by `{res['meta']['command']}` on {res['meta']['date']}; "
                      f"see [../reliability.md](../reliability.md) for what each part does.\n\n{tables}")
    atomic_write_text(out / "reliability.md", _page(res, tables))
    print(tables)


if __name__ == "__main__":
    main()
