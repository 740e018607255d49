"""The JSON API: each route works on good input, and bad uploads come back as 4xx with a message naming the problem."""

from __future__ import annotations

import json

import pytest

from tests.serve.conftest import png


def _files(field, blobs):
    return [(field, (f"{field}{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def test_models_are_discovered_by_kind(client):
    models = client.get("/api/models").json()["models"]
    assert [m["id"] for m in models["tokenizer"]][-1] == "tok/final"
    assert "lm/final/image_tokenizer" in [m["id"] for m in models["tokenizer"]]  # the decoder's own tokenizer
    assert [m["id"] for m in models["caml"]] == ["caml/final"]
    assert [m["id"] for m in models["lm"]] == ["lm/final"]


def test_openapi_lists_every_api_route(client):
    schema = client.get("/openapi.json").json()
    for route in ("/api/tokenize", "/api/fewshot", "/api/chat", "/api/chat/stream", "/api/models", "/api/health"):
        assert route in schema["paths"], route
    body = schema["paths"]["/api/tokenize"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["image"]["format"] == "binary"


def test_tokenize_returns_grid_reconstruction_and_usage(client):
    r = client.post("/api/tokenize", files=_files("image", [png((40, 30))]), data={"checkpoint": "tok/final"})
    assert r.status_code == 200, r.text
    out = r.json()
    h, w = out["grid"]
    assert (h, w) == (8, 8) and len(out["tokens"]) == h and len(out["tokens"][0]) == w
    flat = [c for row in out["tokens"] for c in row]
    assert all(0 <= c < out["codebook_size"] for c in flat)
    assert out["distinct_codes"] == len(set(flat))
    assert sum(c["count"] for c in out["top_codes"]) <= h * w
    # per-token usage: each cell's count is the number of cells sharing its code
    assert out["token_uses"][0][0] == flat.count(out["tokens"][0][0])
    assert out["reconstruction_png"].startswith("data:image/png;base64,")


def test_fewshot_returns_probabilities_per_query(client):
    support = [png(seed=i) for i in range(4)]
    r = client.post("/api/fewshot", files=_files("support", support) + _files("queries", [png(seed=9), png(seed=10)]),
                    data={"labels": ["cat", "dog", "cat", "dog"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["classes"] == ["cat", "dog"] and len(out["predictions"]) == 2
    for p in out["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-4
        assert p["prediction"] == max(p["probabilities"], key=p["probabilities"].get)


def test_chat_returns_text_and_a_drawn_image(client, tmp_path):
    r = client.post("/api/chat", data={"prompt": "caption:", "max_new_tokens": "6"}, files=_files("images", [png()]))
    assert r.status_code == 200, r.text
    assert r.json()["backend"] == "plain" and r.json()["events"][-1]["type"] == "done"
    r = client.post("/api/chat", data={"prompt": "draw: a red circle.", "draw": "on"})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 1 and images[0]["png"].startswith("data:image/png")
    saved = client.get(images[0]["url"])
    assert saved.status_code == 200 and saved.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "data" / "generated").glob("*.png"))) == 1  # written inside the data folder only


def test_chat_stream_sends_server_sent_events(client):
    with client.stream("POST", "/api/chat/stream", data={"prompt": "question: what shape? answer:", "max_new_tokens": "5"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("blob", "status", "words"),
    [
        (b"%PDF-1.4 not an image at all", 415, "not an image"),
        (png(fmt="TIFF"), 415, "TIFF"),
        (png()[:60], 422, "image"),  # truncated: the header parses, the pixels do not
        (png((600, 20)), 422, "600x20"),  # over max_image_side (512 in serve_debug)
        (b"", 422, "empty"),
    ],
    ids=["wrong-type", "disallowed-type", "corrupt", "too-many-pixels", "empty"],
)
def test_bad_uploads_are_4xx_with_a_message(client, blob, status, words):
    r = client.post("/api/tokenize", files=[("image", ("x.png", blob, "image/png"))])  # the client's type is not trusted
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert r.json()["error"]["field"] == "image"


def test_oversized_upload_is_413(client):
    big = png((500, 500), fmt="BMP")  # ~750 kB, over the 256 kB per-file cap of serve_debug
    r = client.post("/api/tokenize", files=[("image", ("big.bmp", big, "image/bmp"))])
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]
    huge = b"x" * (3 * 1024 * 1024)  # over the 2 MiB request cap: refused before the body is parsed
    r = client.post("/api/tokenize", files=[("image", ("huge.png", huge, "image/png"))])
    assert r.status_code == 413 and "request body" in r.json()["error"]["message"]


def test_other_bad_requests_name_the_problem(client):
    r = client.post("/api/tokenize", data={"checkpoint": "tok/final"})
    assert r.status_code == 422 and "no image" in r.json()["error"]["message"]
    r = client.post("/api/tokenize", files=_files("image", [png()]), data={"checkpoint": "../../etc"})
    assert r.status_code == 404 and "not a tokenizer model" in r.json()["error"]["message"]
    r = client.post("/api/tokenize", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    r = client.post("/api/fewshot", files=_files("support", [png(), png(seed=1)]) + _files("queries", [png()]), data={"labels": ["a"]})
    assert r.status_code == 422 and "labels" in r.json()["error"]["message"]
    r = client.post("/api/fewshot", files=_files("support", [png(), png(seed=1)]) + _files("queries", [png()]), data={"labels": ["a", "a"]})
    assert r.status_code == 422 and "at least 2 classes" in r.json()["error"]["message"]
    r = client.post("/api/chat", data={"prompt": "x", "max_new_tokens": "100000"})
    assert r.status_code == 422 and "max_new_tokens" in r.json()["error"]["message"]
    r = client.post("/api/chat", data={"prompt": "<image> and <image>"}, files=_files("images", [png()]))
    assert r.status_code == 422 and "markers" in r.json()["error"]["message"]


def test_html_pages_render_and_errors_are_html(client):
    for page in ("/", "/tokenize", "/fewshot", "/chat"):
        r = client.get(page)
        assert r.status_code == 200 and "<form" in r.text or page == "/", page
    r = client.post("/tokenize", files=[("image", ("x.png", b"GIF89a garbage", "image/gif"))])
    assert r.status_code in (415, 422) and r.headers["content-type"].startswith("text/html")
    assert 'id="error-message"' in r.text and "x.png" in r.text
    r = client.get("/nope")
    assert r.status_code == 404 and "no page at /nope" in r.text


def test_timeout_is_reported(serve_runs, tmp_path):
    from fastapi.testclient import TestClient

    from tessera.serve import ServeConfig, ServeLimits, create_app

    app = create_app(runs_dir=serve_runs, data_dir=tmp_path, config=ServeConfig(limits=ServeLimits(request_timeout_s=1e-4)))
    with TestClient(app) as c:
        r = c.post("/api/fewshot", files=_files("support", [png(), png(seed=1)]) + _files("queries", [png()]), data={"labels": ["a", "b"]})
    assert r.status_code == 504 and "longer than the limit" in r.json()["error"]["message"]


def test_nothing_is_written_outside_the_data_folder(serve_runs, client):
    before = sorted(p for p in serve_runs.rglob("*"))
    client.post("/api/tokenize", files=_files("image", [png()]))
    client.post("/api/chat", data={"prompt": "draw: a blue square.", "draw": "1"})
    assert sorted(p for p in serve_runs.rglob("*")) == before


def test_a_registered_backend_serves_the_checkpoints_it_accepts(serve_runs, tmp_path):
    """The hook for the post-trained checkpoint + safety layer: "auto" picks it for the folders it accepts."""
    from fastapi.testclient import TestClient

    from tessera.serve import ChatEvent, create_app, register_chat_backend, serve_debug
    from tessera.serve import backends as B

    class Refuser:
        name = "refuser"

        def __init__(self, folder):
            self.folder = folder

        def stream(self, request):
            yield ChatEvent("refusal", f"not answering {request.prompt!r}")
            yield ChatEvent("done")

    register_chat_backend("refuser", Refuser, accepts=lambda folder: (folder / "REFUSE").is_file(), priority=10)
    try:
        app = create_app(runs_dir=serve_runs, data_dir=tmp_path, config=serve_debug())
        with TestClient(app) as c:
            assert c.post("/api/chat", data={"prompt": "hi", "max_new_tokens": "2"}).json()["backend"] == "plain"
            (serve_runs / "lm" / "final" / "REFUSE").write_text("")
            try:
                out = c.post("/api/chat", data={"prompt": "hi"}).json()
            finally:
                (serve_runs / "lm" / "final" / "REFUSE").unlink()
        assert out["backend"] == "refuser" and out["text"] == "not answering 'hi'"
    finally:
        B._BACKENDS.pop("refuser", None)


def test_configs_load_and_match_the_code():
    from pathlib import Path

    from tessera.config import ConfigError, load_config
    from tessera.serve import ServeConfig, serve_debug

    root = Path(__file__).resolve().parents[2] / "configs" / "serve"
    assert load_config(ServeConfig, root / "serve.yaml") == ServeConfig()
    assert load_config(ServeConfig, root / "serve_debug.yaml") == serve_debug()
    with pytest.raises(ConfigError, match="max_upload_byte"):
        load_config(ServeConfig, None, ["limits.max_upload_byte=3"])
    with pytest.raises(ValueError, match="allowed_formats"):
        load_config(ServeConfig, None, ["limits.allowed_formats=[EXE]"])


def test_a_streamed_body_over_the_cap_is_413(client):
    """Without a Content-Length (chunked upload) the cap is enforced while the body streams in."""
    boundary = "tesseraboundary"

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(30):  # 3 MB, over the 2 MiB request cap of serve_debug
            yield b"x" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/api/tokenize", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "request body" in r.json()["error"]["message"]


def test_a_post_trained_checkpoint_is_served_behind_its_safety_layer(serve_runs, tmp_path):
    """A checkpoint with the safety/ folder the post-training recipes write goes through the safety layer."""
    import shutil

    from fastapi.testclient import TestClient

    from tessera.lm.safety import SafetyClassifier, SafetyConfig, SafetyFilter
    from tessera.serve import create_app, serve_debug

    safety_dir = serve_runs / "lm" / "final" / "safety"
    SafetyFilter(SafetyConfig(blocklist=["glorp"]), SafetyClassifier.default()).save(safety_dir)
    try:
        app = create_app(runs_dir=serve_runs, data_dir=tmp_path, config=serve_debug())
        with TestClient(app) as c:
            blocked = c.post("/api/chat", data={"prompt": "please say glorp", "max_new_tokens": "4"}).json()
            passed = c.post("/api/chat", data={"prompt": "how many shapes are there?", "max_new_tokens": "4"}).json()
    finally:
        shutil.rmtree(safety_dir)
    assert blocked["backend"] == "safe" and passed["backend"] == "safe"
    kinds = [e["type"] for e in blocked["events"]]
    assert "refusal" in kinds and "text" not in kinds and kinds[-1] == "done"
    assert [e["type"] for e in passed["events"]][-1] == "done" and "refusal" not in [e["type"] for e in passed["events"]]
