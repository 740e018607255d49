"""A runs folder with one small *untrained* model of each kind (tokenizer, CAML, decoder), built once per session.

The models are random: these tests check the app (parsing, validation, rendering, streaming), not model quality.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="tessera serve needs the `serve` extra (fastapi)")
pytest.importorskip("httpx", reason="the API tests need httpx (dev extra)")


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory):
    from tessera.icl.model import CAML, CAMLConfig
    from tessera.lm import Decoder, Processor, Vocabulary, config_from_name, save_pretrained
    from tessera.tokenizer import ImageTokenizer

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    tok = ImageTokenizer.from_name("vqvae-debug").eval()
    tok.save_pretrained(root / "tok" / "final")
    caml = CAML(CAMLConfig.from_name("caml-debug", feature_dim=_feature_dim("tessera-resnet-debug"))).eval()
    caml.save_pretrained(root / "caml" / "final", extractor="tessera-resnet-debug")
    vocab = Vocabulary.default(image_codebook_size=tok.config.codebook_size)
    proc = Processor(vocab, tok)
    lm = Decoder(config_from_name("debug", vocab_size=vocab.size)).eval()
    save_pretrained(lm, proc, root / "lm" / "final")
    return root


def _feature_dim(name: str) -> int:
    from tessera.features import load_extractor

    return load_extractor(name).embed_dim


def png(size=(24, 20), seed=0, fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    from PIL import Image

    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def client(serve_runs, tmp_path):
    from fastapi.testclient import TestClient

    from tessera.serve import create_app, serve_debug

    app = create_app(runs_dir=serve_runs, data_dir=tmp_path / "data", config=serve_debug())
    with TestClient(app) as c:
        yield c
