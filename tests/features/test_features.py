"""Feature extractors: the shared interface, Tessera's network, the registry, and adapters on random-weight models."""

from __future__ import annotations

import json

import pytest
import torch

from tessera.features import (
    RESNET_PRESETS,
    FeatureExtractor,
    TesseraResNetExtractor,
    list_extractors,
    load_extractor,
    resize_center_crop_tensor,
)


@pytest.fixture()
def debug_ext() -> TesseraResNetExtractor:
    return load_extractor("tessera-resnet-debug")


def test_embed_shape_dtype_and_any_input_size(debug_ext):
    for size in [(1, 1), (32, 32), (17, 45)]:
        out = debug_ext.embed(torch.rand(3, 3, *size))
        assert out.shape == (3, debug_ext.embed_dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_frozen_stays_eval_and_passes_gradients_to_images(debug_ext):
    parent = torch.nn.Sequential(debug_ext)
    parent.train()
    assert not debug_ext.training and not any(m.training for m in debug_ext.modules())
    assert not any(p.requires_grad for p in debug_ext.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    maps = debug_ext.forward_features(x)
    assert [m.shape[1] for m in maps] == list(debug_ext.feature_channels)
    assert maps[0].shape[-1] == 16  # native resolution kept (first stage pools by 2)
    sum(m.square().mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_embedding_is_deterministic_and_batch_independent(debug_ext):
    x = torch.rand(4, 3, 32, 32)
    full = debug_ext.embed(x)
    single = torch.cat([debug_ext.embed(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "float"),
        (torch.rand(2, 1, 8, 8), r"\(B, 3, H, W\)"),
        (torch.rand(3, 8, 8), r"\(B, 3, H, W\)"),
        (torch.rand(2, 3, 8, 8) * 255, r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.rand(0, 3, 8, 8), "empty"),
    ],
)
def test_bad_images_raise_clear_errors(debug_ext, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        debug_ext.embed(bad)


def test_resize_center_crop_matches_shorter_side_rule():
    x = torch.rand(1, 3, 40, 80)
    out = resize_center_crop_tensor(x, 20, crop_pct=1.0)
    assert out.shape == (1, 3, 20, 20)
    out = resize_center_crop_tensor(torch.rand(1, 3, 100, 100), 90, crop_pct=0.9)  # 100 -> 100, crop 90
    assert out.shape == (1, 3, 90, 90)


def test_save_load_roundtrip_and_mismatch_errors(tmp_path, debug_ext):
    for p in debug_ext.net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    debug_ext.save_pretrained(tmp_path / "a", metadata={"note": "test"})
    loaded = load_extractor(tmp_path / "a")
    assert isinstance(loaded, TesseraResNetExtractor) and loaded.metadata == {"note": "test"}
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.embed(x), debug_ext.embed(x), atol=2e-2, rtol=2e-2)  # fp16 storage

    # Weights of another architecture under this config: the error names the file.
    other = TesseraResNetExtractor(RESNET_PRESETS["tessera-resnet-s"])
    other.save_pretrained(tmp_path / "b")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_extractor(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_extractor(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TesseraResNetExtractor.from_pretrained(tmp_path / "a")


def test_registry_names_and_errors(tmp_path):
    names = list_extractors()
    assert "tessera-resnet-s" in names and "timm:<name>" in names
    with pytest.raises(ValueError, match="unknown extractor"):
        load_extractor("no-such-net")
    with pytest.raises(ValueError, match="not a Tessera feature network"):
        load_extractor(tmp_path)


def test_shipped_default_loads_or_explains():
    try:
        ext = load_extractor("tessera-resnet-s")
    except FileNotFoundError as exc:
        assert "tessera features pretrain" in str(exc)
        return
    assert isinstance(ext, FeatureExtractor) and ext.embed_dim == 256
    assert ext.embed(torch.rand(2, 3, 32, 32)).shape == (2, 256)


# -- adapters on locally built random-weight models (never downloaded) --------------------------------------------------
def test_timm_adapter_random_weights_and_local_checkpoint(tmp_path):
    pytest.importorskip("timm")
    from safetensors.torch import save_file

    ext = load_extractor("timm:test_resnet", pretrained=False)
    assert ext.input_size == 160 and ext.crop_pct == pytest.approx(0.95)
    out = ext.embed(torch.rand(2, 3, 50, 70))
    assert out.shape == (2, ext.embed_dim) == (2, 96)
    maps = ext.forward_features(torch.rand(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == list(ext.feature_channels)

    # A local checkpoint file is loaded instead of any download.
    ref = ext.model
    for p in ref.parameters():
        p.data.uniform_(-0.1, 0.1)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    ext2 = load_extractor("timm:test_resnet", checkpoint=tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(ext2.embed(x), ext.embed(x))
    with pytest.raises(FileNotFoundError):
        load_extractor("timm:test_resnet", checkpoint=tmp_path / "missing.safetensors")


def test_timm_vit_adapter():
    pytest.importorskip("timm")
    ext = load_extractor("timm:test_vit", pretrained=False)
    assert ext.embed(torch.rand(2, 3, 40, 40)).shape == (2, ext.embed_dim)
    maps = ext.forward_features(torch.rand(1, 3, 160, 160))
    assert maps and all(m.ndim == 4 for m in maps)


def _tiny_open_clip_config(tmp_path):
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "tessera-test-clip.json").write_text(json.dumps(cfg))
    return tmp_path / "tessera-test-clip.json"


def test_open_clip_adapter_random_and_local_checkpoint(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    open_clip.add_model_config(_tiny_open_clip_config(tmp_path))
    ext = load_extractor("open_clip:tessera-test-clip")
    assert ext.input_size == 32 and ext.embed_dim == 16
    x = torch.rand(2, 3, 48, 40)
    assert ext.embed(x).shape == (2, 16)
    torch.save(ext.model.state_dict(), tmp_path / "clip.pt")
    ext2 = load_extractor(f"open_clip:tessera-test-clip/{tmp_path / 'clip.pt'}")
    torch.testing.assert_close(ext2.embed(x), ext.embed(x))
    pre = load_extractor("open_clip:tessera-test-clip", pre_projection=True)
    assert pre.embed_dim == 32 and pre.embed(x).shape == (2, 32)


@pytest.mark.parametrize("family", ["vit", "clip", "resnet"])
def test_hf_adapter_from_local_folder(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    if family == "vit":
        cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
        model = transformers.ViTModel(cfg)
        proc = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    elif family == "clip":
        cfg = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
        model = transformers.CLIPVisionModel(cfg)
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    else:
        cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        model = transformers.ResNetModel(cfg)
        proc = None
    model.save_pretrained(tmp_path)
    if proc is not None:
        proc.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no image processor") if proc is None else _nullcontext():
        ext = load_extractor(tmp_path)  # folder with a transformers config.json
    out = ext.embed(torch.rand(2, 3, 45, 30))
    assert out.shape == (2, ext.embed_dim)
    if family == "clip":
        assert ext.crop_pct == pytest.approx(32 / 36)
        with torch.no_grad():
            ref = model(pixel_values=ext.preprocess(torch.rand(1, 3, 32, 32).fill_(0.3))).pooler_output
        torch.testing.assert_close(ext.embed(torch.full((1, 3, 32, 32), 0.3)), ref)
    maps = ext.forward_features(torch.rand(1, 3, 32, 32))
    assert maps and all(m.ndim == 4 for m in maps)
    ext2 = load_extractor(f"hf:{tmp_path}")
    torch.testing.assert_close(ext2.embed(torch.full((1, 3, 32, 32), 0.5)), ext.embed(torch.full((1, 3, 32, 32), 0.5)))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_tokenizer_encoder_adapter(tmp_path):
    """The Tessera tokenizer's encoder as an extractor (pooled pre-quantisation latents); needs `tessera.tokenizer`."""
    tok_mod = pytest.importorskip("tessera.tokenizer")
    cfg_cls = getattr(tok_mod, "TokenizerConfig", None)
    tok = tok_mod.ImageTokenizer(cfg_cls()) if cfg_cls is not None else tok_mod.ImageTokenizer.from_name("vqvae-debug")
    tok.save_pretrained(tmp_path / "tok")
    ext = load_extractor(f"tokenizer:{tmp_path / 'tok'}")
    x = torch.rand(2, 3, 40, 50)
    out = ext.embed(x)
    assert out.shape == (2, ext.embed_dim)
    z = tok.encode_latents(ext.preprocess(x))
    torch.testing.assert_close(out, z.mean(dim=(2, 3)) if z.ndim == 4 else z.mean(dim=1))
    assert ext.forward_features(torch.rand(1, 3, 32, 32))[0].ndim == 4
    assert type(load_extractor(tmp_path / "tok")).__name__ == "TokenizerExtractor"
