"""A bounded load test on loopback: concurrent clients, a fixed request count, no server errors.

Latency numbers are a benchmark (benchmarks/serve_load.py -> docs/results/serve_load.md), not asserted here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_clients_get_no_server_errors(serve_runs, tmp_path):
    from tessera.serve import create_app, serve_debug
    from tests.serve.live import live_server

    bench = _bench()
    app = create_app(runs_dir=serve_runs, data_dir=tmp_path / "data", config=serve_debug())
    with live_server(app) as url:
        result = bench.run_load(url, requests=40, concurrency=6, seed=1)
    overall = result["overall"]
    assert overall["count"] == 40
    assert overall["server_errors"] == 0, result
    assert overall["client_errors"] == 0, result
    assert set(result["routes"]) == {"health", "models", "tokenize", "fewshot", "chat"}
    assert 0 < overall["p50_ms"] <= overall["p90_ms"] <= overall["p99_ms"] <= overall["max_ms"]
