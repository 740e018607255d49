"""Load test of `tessera serve` on loopback: concurrent clients, a fixed number of requests, latency percentiles.

    python benchmarks/serve_load.py                           # 400 requests, 8 concurrent clients
    python benchmarks/serve_load.py --requests 60 --concurrency 4 --out-name serve_load_quick
    python benchmarks/serve_load.py --runs runs               # the models of a runs folder (e.g. after `tessera demo`)

The server is `tessera serve` in its own process (uvicorn, one worker) on 127.0.0.1; the clients are httpx async
connections in this process, each sending the next request of a fixed, seeded mix as soon as its last one returns:
health and model-list calls, tokenize (one image), few-shot (4 labelled images of 2 classes, 2 queries) and a
short chat turn (8 new tokens). Without `--runs` (or when the folder lacks a model kind) small untrained models
are written to a temporary folder: latency depends on model size and not on training, and the doc names the models.

Writes docs/results/<out-name>.md and .json: per route and overall count, p50/p90/p99/max latency, throughput, and
the count of 5xx responses (the run fails if there is any).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIX = (("health", 1), ("models", 1), ("tokenize", 4), ("fewshot", 3), ("chat", 1))


def _png(seed: int, size: int = 32) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_untrained_runs(root: Path) -> dict[str, str]:
    """Small untrained models of each kind under `root` (tokenizer, CAML, decoder); returns a description of each."""
    import torch

    from tessera.features import load_extractor
    from tessera.icl.model import CAML, CAMLConfig
    from tessera.lm import Decoder, Processor, Vocabulary, config_from_name, save_pretrained
    from tessera.tokenizer import ImageTokenizer

    torch.manual_seed(0)
    tok = ImageTokenizer.from_name("vqvae-f4-k512-32px").eval()
    tok.save_pretrained(root / "tokenizer" / "final")
    ext = load_extractor("tessera-resnet-s")
    CAML(CAMLConfig.from_name("caml-s", feature_dim=ext.embed_dim)).eval().save_pretrained(root / "caml" / "final", extractor="tessera-resnet-s")
    vocab = Vocabulary.default(image_codebook_size=tok.config.codebook_size)
    lm = Decoder(config_from_name("nano", vocab_size=vocab.size)).eval()
    save_pretrained(lm, Processor(vocab, tok), root / "lm" / "final")
    return {"tokenizer": "vqvae-f4-k512-32px (untrained)", "caml": "caml-s on tessera-resnet-s (untrained CAML)",
            "lm": f"nano decoder, {lm.num_parameters() / 1e6:.2f}M parameters (untrained)"}


def request_plan(n: int, seed: int = 0) -> list[str]:
    """The route of each of `n` requests: the mix's proportions, in a seeded random order."""
    names = [name for name, w in MIX for _ in range(w)]
    rng = np.random.default_rng(seed)
    return [names[int(i)] for i in rng.integers(0, len(names), n)]


async def _one(client, route: str, i: int) -> int:
    if route == "health":
        r = await client.get("/api/health")
    elif route == "models":
        r = await client.get("/api/models")
    elif route == "tokenize":
        r = await client.post("/api/tokenize", files=[("image", (f"{i}.png", _png(i), "image/png"))])
    elif route == "fewshot":
        files = [("support", (f"s{k}.png", _png(i * 10 + k), "image/png")) for k in range(4)]
        files += [("queries", (f"q{k}.png", _png(i * 10 + 5 + k), "image/png")) for k in range(2)]
        r = await client.post("/api/fewshot", files=files, data={"labels": ["a", "b", "a", "b"]})
    elif route == "chat":
        r = await client.post("/api/chat", data={"prompt": "question: what shape is at the top left? answer:", "max_new_tokens": "8"})
    else:
        raise ValueError(f"unknown route {route!r}")
    return r.status_code


async def _drive(url: str, plan: list[str], concurrency: int, timeout: float) -> list[tuple[str, int, float]]:
    import httpx

    results: list[tuple[str, int, float]] = []
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(plan):
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                try:
                    status = await _one(client, plan[i], i)
                except httpx.HTTPError:
                    status = 599  # no response at all counts as a server error
                results.append((plan[i], status, time.perf_counter() - t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def run_load(url: str, requests: int, concurrency: int, seed: int = 0, timeout: float = 120.0) -> dict:
    """Send `requests` requests from `concurrency` clients to the app at `url`; latency summary per route and overall."""
    plan = request_plan(requests, seed)
    t0 = time.perf_counter()
    results = asyncio.run(_drive(url, plan, concurrency, timeout))
    wall = time.perf_counter() - t0

    def summary(rows: list[tuple[str, int, float]]) -> dict:
        lat = np.array([r[2] for r in rows]) * 1000
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
        return {"count": len(rows), "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
                "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "mean_ms": float(lat.mean()),
                "status": statuses, "server_errors": sum(1 for r in rows if r[1] >= 500),
                "client_errors": sum(1 for r in rows if 400 <= r[1] < 500)}

    routes = {name: summary([r for r in results if r[0] == name]) for name, _ in MIX if any(r[0] == name for r in results)}
    return {"requests": requests, "concurrency": concurrency, "seed": seed, "wall_s": wall, "throughput_rps": requests / wall,
            "overall": summary(results), "routes": routes}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(runs: Path, data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "tessera", "serve", "--runs", str(runs), "--data", str(data), "--port", str(port),
                             "limits.request_timeout_s=120"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tessera serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("tessera serve did not answer /api/health within 120 s")


def _warm(url: str) -> None:
    """One request per route first, so model loading is not counted as latency."""
    asyncio.run(_drive(url, [name for name, _ in MIX], 1, 300))


def write_results(result: dict, out_name: str, command: str) -> Path:
    from tessera.io import atomic_write_text

    md = [f"# `tessera serve` under load ({out_name})", "",
          f"Produced by `{command}` on {result['machine']}, {result['date']}. The machine was shared with other jobs "
          f"(1-minute load average {result['load_average_before'][0]:.1f} before, {result['load_average_after'][0]:.1f} after, on "
          f"{os.cpu_count()} cores), so absolute latencies are pessimistic and vary between runs.", "",
          f"Server: `tessera serve` (uvicorn, one process, OMP_NUM_THREADS={result['OMP_NUM_THREADS']}) on 127.0.0.1; clients: "
          f"{result['concurrency']} concurrent httpx connections in the benchmark's own process, {result['requests']} requests in a fixed seeded mix "
          f"({', '.join(f'{n} x{w}' for n, w in MIX)} out of {sum(w for _, w in MIX)}); one warm-up request per route first.", "",
          f"Models: {'; '.join(f'{k}: {v}' for k, v in result['models'].items())}.", "",
          f"Wall time {result['wall_s']:.1f} s, throughput {result['throughput_rps']:.1f} requests/s, "
          f"**{result['overall']['server_errors']} server errors (5xx)**, {result['overall']['client_errors']} client errors (4xx).", "",
          "| route | requests | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | 5xx |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in [*result["routes"].items(), ("all", result["overall"])]:
        md.append(f"| {name} | {s['count']} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | {s['p99_ms']:.0f} | {s['max_ms']:.0f} | {s['server_errors']} |")
    md += ["", "Model calls run one at a time per model on the CPU, so latency under concurrency is mostly queueing "
           "behind other requests; the health and model-list routes show the app's own overhead."]
    out = ROOT / "docs" / "results"
    atomic_write_text(out / f"{out_name}.md", "\n".join(md) + "\n")
    atomic_write_text(out / f"{out_name}.json", json.dumps(result, indent=2) + "\n")
    return out / f"{out_name}.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--runs", default=None, help="runs folder with trained models (default: untrained models in a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-name", default="serve_load")
    args = ap.parse_args()
    import torch

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs) if args.runs else Path(tmp) / "runs"
        models = {"tokenizer": "newest tokenizer folder in " + str(runs), "caml": "newest CAML folder", "lm": "newest decoder folder"}
        if args.runs is None:
            models = make_untrained_runs(runs)
        port = _free_port()
        server = _start_server(runs, Path(tmp) / "data", port)
        try:
            url = f"http://127.0.0.1:{port}"
            _warm(url)
            result = run_load(url, args.requests, args.concurrency, args.seed)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result.update(load_average_before=load_before, load_average_after=os.getloadavg(), models=models, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "(unset)"), machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
                  f"torch {torch.__version__}", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    cmd = "python benchmarks/serve_load.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("requests", args.requests), ("concurrency", args.concurrency), ("out_name", args.out_name))
        if v != ap.get_default(k))
    path = write_results(result, args.out_name, cmd)
    print(path.read_text())
    return 1 if result["overall"]["server_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
