"""Each model family runs forward and backward from its debug preset; the VQGAN objective and the exact-gradient
baselines send the gradients they should."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tessera.tokenizer import ImageTokenizer, VideoTokenizer
from tessera.tokenizer.losses import (
    LossConfig,
    PatchDiscriminator,
    TokenizerObjective,
    hessian_vector_product,
    hinge_d_loss,
)
from tessera.tokenizer.perceptual import PerceptualLoss, RandomConvFeatures

FAMILIES = {
    "vqvae-debug": LossConfig(),
    "vqgan-debug": LossConfig(perceptual_weight=0.1, perceptual_network="random-conv", adversarial_weight=0.1, disc_layers=1, disc_channels=8),
    "vit-vqgan-debug": LossConfig(perceptual_weight=0.1, perceptual_network="random-conv"),
    "video-debug": LossConfig(),
}


def _batch(tok):
    c = tok.config
    if c.family == "video":
        return torch.rand(2, c.num_frames, 3, c.image_size, c.image_size)
    return torch.rand(4, 3, c.image_size, c.image_size)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("estimator", ["rotation", "ste"])
def test_forward_backward_reaches_every_trainable_parameter(name, estimator):
    cls = VideoTokenizer if name.startswith("video") else ImageTokenizer
    tok = cls.from_name(name, estimator=estimator)
    loss_cfg = FAMILIES[name]
    perceptual = RandomConvFeatures() if loss_cfg.perceptual_weight > 0 else None
    obj = TokenizerObjective(tok, loss_cfg, perceptual).train()
    out = obj(_batch(tok), step=1)
    assert torch.isfinite(out.loss) and out.loss.ndim == 0
    out.loss.backward()
    missing = [n for n, p in obj.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, missing
    assert all(p.grad is None for p in obj.perceptual.parameters()) if obj.perceptual is not None else True
    for key in ("rec_loss", "usage", "perplexity", "quantization_error"):
        assert key in out.metrics
    if obj.discriminator is not None:
        assert {"g_loss", "d_loss", "d_weight"} <= set(out.metrics)


def test_discriminator_is_off_before_its_start_step():
    tok = ImageTokenizer.from_name("vqgan-debug")
    obj = TokenizerObjective(tok, LossConfig(adversarial_weight=0.5, disc_start=100, disc_layers=1, disc_channels=8))
    out = obj(torch.rand(4, 3, 16, 16), step=99)
    out.loss.backward()
    assert "g_loss" not in out.metrics
    assert all(p.grad is None for p in obj.discriminator.parameters())


def test_generator_term_does_not_train_the_discriminator():
    """The adversarial generator term must leave the discriminator's gradient to the hinge loss alone."""
    torch.manual_seed(0)
    tok = ImageTokenizer.from_name("vqgan-debug")
    cfg = LossConfig(adversarial_weight=1.0, adaptive_weight=False, disc_layers=1, disc_channels=8)
    obj = TokenizerObjective(tok, cfg)
    x = torch.rand(4, 3, 16, 16)
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    obj(x, step=0).loss.backward()
    grads = [p.grad.clone() for p in obj.discriminator.parameters()]
    # Reference: the hinge loss alone on the same (detached) reconstruction, from the same codebook/BatchNorm state.
    obj.zero_grad()
    obj.load_state_dict(state)
    with torch.no_grad():
        recon = tok(x).reconstruction
    hinge_d_loss(obj.discriminator(x), obj.discriminator(recon)).backward()
    for g, p in zip(grads, obj.discriminator.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_patch_discriminator_output_and_minimum_size():
    d = PatchDiscriminator(3, 8, 2)
    assert d(torch.rand(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="disc_layers"):
        TokenizerObjective(ImageTokenizer.from_name("vqvae-debug"), LossConfig(adversarial_weight=0.1, disc_layers=3))


def _encoder_grad(tok, obj, x):
    tok.zero_grad()
    obj(x, step=0).loss.backward()
    return tok.encoder.conv_out.weight.grad.clone()


def test_double_forward_trains_the_encoder_like_an_autoencoder():
    torch.manual_seed(0)
    tok = ImageTokenizer.from_name("vqvae-debug", estimator="double_forward", commitment_weight=0.0)
    obj = TokenizerObjective(tok, LossConfig())
    x = torch.rand(4, 3, 16, 16)
    got = _encoder_grad(tok, obj, x)
    tok.zero_grad()
    z = tok.encode_latents(x)
    nn.functional.mse_loss(tok.decode_latents(z), x).backward()  # the plain autoencoder's encoder gradient
    torch.testing.assert_close(got, tok.encoder.conv_out.weight.grad, rtol=1e-4, atol=1e-7)


def test_hessian_baseline_adds_the_hessian_vector_product():
    torch.manual_seed(0)
    tok = ImageTokenizer.from_name("vqvae-debug", estimator="hessian", commitment_weight=0.0)
    obj = TokenizerObjective(tok, LossConfig())
    x = torch.rand(4, 3, 16, 16)
    state = {k: v.clone() for k, v in tok.state_dict().items()}
    got = _encoder_grad(tok, obj, x)
    tok.load_state_dict(state)  # the objective's EMA update moved the codebook; start the reference from the same one
    z = tok.encode_latents(x)
    q = tok.quantizer(z).quantized.detach()
    rec = lambda v: nn.functional.mse_loss(tok.decode_latents(v), x)  # noqa: E731
    q_leaf = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rec(q_leaf), q_leaf)
    hv = hessian_vector_product(rec, q, z.detach() - q)
    # H v agrees with a finite difference of the gradient along v.
    eps = 1e-3
    qp = (q + eps * (z.detach() - q)).requires_grad_(True)
    (gp,) = torch.autograd.grad(rec(qp), qp)
    torch.testing.assert_close(hv, (gp - g) / eps, rtol=5e-2, atol=5e-5)
    # The encoder received g + H (e - q) through z.
    tok.zero_grad()
    (z * (g + hv)).sum().backward()
    torch.testing.assert_close(got, tok.encoder.conv_out.weight.grad, rtol=1e-3, atol=1e-7)


def test_perceptual_loss_is_zero_for_identical_images_and_differentiable():
    loss = PerceptualLoss(RandomConvFeatures())
    x = torch.rand(2, 3, 16, 16)
    assert float(loss(x, x)) < 1e-6
    y = torch.rand(2, 3, 16, 16, requires_grad=True)
    val = loss(y, x)
    val.backward()
    assert float(val) > 0 and y.grad is not None and torch.isfinite(y.grad).all()
