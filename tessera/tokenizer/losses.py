"""Training objectives of the tokenizers: reconstruction, VQ, perceptual and adversarial terms, and the rotation-trick
paper's "exact gradient" baselines. `TokenizerObjective` is the module the shared trainer (`tessera.train.fit`) runs.

Axis legend: B batch, T frames, C channels, H W image side, D latent channels, h w latent grid.

Objective (per micro-batch, images on the [0, 1] scale):
    L = rec(x_hat, x) + perceptual_weight * P(x_hat, x) + vq_loss                        (VQ-VAE / ViT-VQGAN)
        + lambda_adapt * adversarial_weight * g_loss(D(x_hat))                           (VQGAN, after disc_start)
        + hinge(D(x), D(sg(x_hat)))                                                       (discriminator)
where vq_loss is the quantizer's commitment term (beta |e - sg(q)|^2, EMA codebook) and lambda_adapt is taming's
adaptive weight |grad_last rec+P| / (|grad_last g_loss| + 1e-4), clamped to [0, 1e4] and detached (Esser et al. 2021,
Eq. 7). Generator and discriminator share one optimiser step (the shared trainer has one AdamW): the generator's
adversarial term runs the discriminator with detached parameters (`torch.func.functional_call`), and the
discriminator's hinge loss sees detached reconstructions, so each term only trains its own side. That is a
simultaneous update, where taming alternates two optimisers on the same batch; the discriminator parameters get their
own AdamW group (betas and learning-rate scale from `LossConfig`).

Exact-gradient baselines (paper Sec. 3 and App. A.3; `TokenizerConfig.estimator`):
    "hessian"         dL/de ~ dL/dq + H_q (e - q): the straight-through gradient plus a Hessian-vector product of
                      the reconstruction loss at q in the direction e - q (double backward through the decoder).
    "double_forward"  L = L_rec(dec(sg(q))) + lambda' L_rec(dec(e)), lambda' = 1e-6, with the encoder-side gradient
                      of the second term multiplied by 1/lambda': the encoder is trained like a plain autoencoder
                      through dec(e), the decoder (almost only) through the quantized path.
Both act in the decoder-input space (after the quantizer's output projection, if any). They apply to the
reconstruction term only, as in the paper's VQ-VAE rows.

Note on the official VQGAN integration of the rotation trick: its rotated output multiplies the detached rotation by
a non-detached e/|e|, which removes the radial component of the gradient. We do not copy that; every family here uses
`tessera.quantize.rotation_trick` (gradient lambda R^T g, App. A.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ObjectiveOutput",
    "LossConfig",
    "PatchDiscriminator",
    "TokenizerObjective",
    "hinge_d_loss",
    "adaptive_weight",
    "hessian_vector_product",
    "scale_grad",
]


@dataclass
class LossConfig:
    """Terms of the tokenizer objective. The defaults are a VQ-VAE (MSE + commitment); VQGAN configs turn on the
    perceptual and adversarial terms."""

    reconstruction: Literal["mse", "l1"] = "mse"
    perceptual_weight: float = 0.0  # 0 disables the perceptual term
    perceptual_network: str = "tessera-resnet-s"  # see tessera.tokenizer.perceptual.load_feature_network
    adversarial_weight: float = 0.0  # 0 disables the discriminator (taming: 0.8; paper Table 9)
    disc_start: int = 0  # optimiser step at which the adversarial terms switch on
    adaptive_weight: bool = True  # taming's gradient-norm balancing of the generator's adversarial term
    disc_layers: int = 2  # stride-2 conv layers of the patch discriminator (3 in pix2pix/taming for 256px)
    disc_channels: int = 64
    disc_lr_scale: float = 1.0  # discriminator learning rate = optim.lr * this
    disc_betas: tuple[float, float] = (0.5, 0.9)  # taming's Adam betas for the discriminator
    exact_gradient_lambda: float = 1e-6  # lambda' of the double-forward baseline (paper App. A.3)

    def __post_init__(self) -> None:
        if self.perceptual_weight < 0 or self.adversarial_weight < 0 or self.disc_start < 0:
            raise ValueError("loss: perceptual_weight, adversarial_weight and disc_start must be >= 0")
        if self.disc_layers < 1 or self.disc_channels < 1 or self.exact_gradient_lambda <= 0:
            raise ValueError("loss: disc_layers, disc_channels and exact_gradient_lambda must be positive")


# -- discriminator ----------------------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """pix2pix/taming NLayerDiscriminator: 4x4 convs (stride 2, then 1), BatchNorm, LeakyReLU(0.2); outputs a map of
    real/fake logits, one per overlapping patch.

    Args:
        in_channels: image channels.
        channels: width of the first layer (doubles per layer, capped at 8x).
        num_layers: stride-2 layers.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2**num_layers, 8)
        layers += [nn.Conv2d(channels * prev, channels * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        self.num_layers = num_layers
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def min_input_size(self) -> int:
        """Smallest square input that leaves a non-empty logit map."""
        size = 1
        for _ in range(2):  # the two stride-1, kernel-4, padding-1 convs each remove one pixel
            size += 1
        for _ in range(self.num_layers):
            size *= 2
        return size

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images * 2.0 - 1.0)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """taming's lambda = |grad_last nll| / (|grad_last g_loss| + 1e-4), clamped to [0, max_weight], detached."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# -- exact-gradient baselines -----------------------------------------------------------------------------------------
class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return g * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    return _ScaleGrad.apply(x, scale)


def hessian_vector_product(fn, q: Tensor, v: Tensor) -> Tensor:
    """H v, where H is the Hessian of the scalar `fn(q)` at `q` (double backward; `v` has q's shape). Detached."""
    with torch.enable_grad():
        q_leaf = q.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(q_leaf), q_leaf, create_graph=True)
        (hv,) = torch.autograd.grad(grad, q_leaf, grad_outputs=v.detach())
    return hv.detach()


# -- the objective ----------------------------------------------------------------------------------------------------
class ObjectiveOutput(NamedTuple):
    """What `TokenizerObjective.forward` returns; the shape of `tessera.train.StepOutput` (models never import the
    trainer, the trainer only reads these two fields)."""

    loss: Tensor
    metrics: dict[str, Tensor]


def _frames(x: Tensor) -> Tensor:
    return x.flatten(0, 1) if x.ndim == 5 else x  # (B, T, C, H, W) -> (B*T, C, H, W) for image-space terms


class TokenizerObjective(nn.Module):
    """The training module of a tokenizer for `tessera.train.fit`: `forward(batch, step) -> StepOutput`.

    Args:
        tokenizer: an `ImageTokenizer` or `VideoTokenizer`.
        loss: the objective's terms.
        perceptual: a frozen feature network for the perceptual term (required when perceptual_weight > 0).
    """

    def __init__(self, tokenizer: nn.Module, loss: LossConfig, perceptual: nn.Module | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.loss_cfg = loss
        cfg = tokenizer.config
        if loss.perceptual_weight > 0:
            if perceptual is None:
                raise ValueError("loss.perceptual_weight > 0 needs a perceptual feature network")
            from tessera.tokenizer.perceptual import PerceptualLoss

            self.perceptual: nn.Module | None = PerceptualLoss(perceptual)
        else:
            self.perceptual = None
        if loss.adversarial_weight > 0:
            self.discriminator: nn.Module | None = PatchDiscriminator(cfg.in_channels, loss.disc_channels, loss.disc_layers)
            need = self.discriminator.min_input_size()
            if cfg.image_size < need:
                raise ValueError(
                    f"loss.disc_layers={loss.disc_layers} needs images of at least {need}px, the tokenizer takes "
                    f"{cfg.image_size}px; lower loss.disc_layers"
                )
        else:
            self.discriminator = None
        if cfg.estimator in ("hessian", "double_forward") and (self.discriminator is not None or self.perceptual is not None):
            raise ValueError(f"estimator={cfg.estimator!r} (an exact-gradient baseline) supports the reconstruction objective only")

    @property
    def perceptual_name(self) -> str | None:
        return None if self.perceptual is None else self.perceptual.name

    def discriminator_group(self) -> dict | None:
        """The discriminator's AdamW parameter group (own betas, learning-rate scale, no weight decay), or None."""
        if self.discriminator is None:
            return None
        return {
            "params": [p for p in self.discriminator.parameters() if p.requires_grad],
            "weight_decay": 0.0,
            "lr_scale": self.loss_cfg.disc_lr_scale,
            "betas": tuple(self.loss_cfg.disc_betas),
        }

    def _rec(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        if self.loss_cfg.reconstruction == "l1":
            return (reconstruction.float() - target.float()).abs().mean()
        return F.mse_loss(reconstruction.float(), target.float())

    def forward(self, batch: Tensor, step: int) -> ObjectiveOutput:
        x = batch
        tok = self.tokenizer
        est = tok.config.estimator
        z = tok.encode_latents(x)
        vq = tok.quantizer(z)
        metrics: dict[str, Tensor] = {}
        extra = z.new_zeros((), dtype=torch.float32)
        if est == "double_forward":
            lam = self.loss_cfg.exact_gradient_lambda
            recon = tok.decode_latents(vq.quantized.detach())  # decoder learns from q; no gradient reaches e here
            rec_e = self._rec(tok.decode_latents(scale_grad(z, 1.0 / lam)), x)  # e gets exactly dL_e/de
            extra = lam * rec_e
            metrics["rec_loss_unquantized"] = rec_e.detach()
        else:
            recon = tok.decode_latents(vq.quantized)  # rotation / straight-through gradient to e
            if est == "hessian":
                hv = hessian_vector_product(lambda q: self._rec(tok.decode_latents(q), x), vq.quantized, z - vq.quantized)
                extra = (z.float() * hv.float()).sum()  # adds H_q (e - q) to the straight-through gradient of e
        rec = self._rec(recon, x)
        nll = rec
        if self.perceptual is not None:
            p_loss = self.perceptual(_frames(recon), _frames(x))
            nll = nll + self.loss_cfg.perceptual_weight * p_loss
            metrics["perceptual_loss"] = p_loss.detach()
        loss = nll + vq.loss + extra

        if self.discriminator is not None and step >= self.loss_cfg.disc_start:
            fake, real = _frames(recon), _frames(x)
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            frozen.update(dict(self.discriminator.named_buffers()))
            g_loss = -torch.func.functional_call(self.discriminator, frozen, (fake,)).float().mean()
            if self.loss_cfg.adaptive_weight and torch.is_grad_enabled():
                weight = adaptive_weight(nll, g_loss, tok.last_layer)
            else:
                weight = torch.ones(())
            logits_real = self.discriminator(real.detach())
            logits_fake = self.discriminator(fake.detach())
            d_loss = hinge_d_loss(logits_real.float(), logits_fake.float())
            loss = loss + self.loss_cfg.adversarial_weight * weight * g_loss + d_loss
            metrics.update(
                g_loss=g_loss.detach(),
                d_loss=d_loss.detach(),
                d_weight=weight,
                logits_real=logits_real.detach().float().mean(),
                logits_fake=logits_fake.detach().float().mean(),
            )
        metrics.update(rec_loss=rec.detach(), vq_loss=vq.loss.detach(), **{k: v for k, v in vq.metrics.items()})
        return ObjectiveOutput(loss, metrics)
