"""Preference objectives against their formulas, and the reward model on a separable toy set."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.lm.model import Decoder, config_from_name
from tessera.lm.preference import (
    bradley_terry_loss,
    dpo_loss,
    response_batch,
    rloo_advantages,
    rloo_loss,
    sequence_logps,
)
from tessera.lm.reward import RewardModel


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_equals_its_formula_on_hand_made_log_probs():
    pc = torch.tensor([-3.0, -10.0, -1.5])
    pr = torch.tensor([-5.0, -9.0, -1.5])
    rc = torch.tensor([-4.0, -8.0, -2.0])
    rr = torch.tensor([-4.5, -8.5, -1.0])
    beta = 0.5
    terms = dpo_loss(pc, pr, rc, rr, beta)
    expected = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True):
        expected.append(-_log_sigmoid(beta * ((a - c) - (b - d))))  # Rafailov et al. 2023, eq. 7
    assert terms.loss.item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert terms.chosen_reward.tolist() == pytest.approx([beta * 1.0, beta * -2.0, beta * 0.5])
    assert terms.accuracy.item() == pytest.approx(2 / 3)  # margins +1.5, -2.5 (x beta), +1.0 (x beta)


def test_dpo_gradient_when_policy_equals_reference():
    # At policy == reference the loss is log 2 and its gradient w.r.t. the *difference* of margins is symmetric:
    # every pair pushes chosen up and rejected down by the same amount (-beta/2 each), so the gradient on the
    # policy's log-probs is beta/2 * (-1, +1), and with zero reward margin the loss is exactly log 2.
    logp = torch.tensor([-2.0, -3.0, -4.0, -5.0], requires_grad=True)
    ref = logp.detach().clone()
    terms = dpo_loss(logp[:2], logp[2:], ref[:2], ref[2:], beta=0.2)
    assert terms.loss.item() == pytest.approx(math.log(2))
    terms.loss.backward()
    assert logp.grad.tolist() == pytest.approx([-0.05, -0.05, 0.05, 0.05])
    # The frozen reference never receives a gradient, even when handed tensors that require one.
    ref_c, ref_r = ref[:2].clone().requires_grad_(), ref[2:].clone().requires_grad_()
    pol = logp.detach().clone().requires_grad_()
    dpo_loss(pol[:2], pol[2:], ref_c, ref_r, beta=0.2).loss.backward()
    assert pol.grad is not None
    assert ref_c.grad is None and ref_r.grad is None
    # Zero gradient when the two replies of each pair are the same sequence (policy == reference == any value).
    same = torch.tensor([-2.0, -3.0], requires_grad=True)
    dpo_loss(same, same, same.detach(), same.detach(), beta=0.2).loss.backward()
    assert same.grad.abs().max().item() == 0.0


def test_dpo_zero_gradient_for_a_model_equal_to_its_reference_on_identical_replies():
    torch.manual_seed(0)
    model = Decoder(config_from_name("debug"))
    batch = response_batch([([2, 10, 11], [12, 13]), ([2, 14], [15, 16, 17])] * 2)
    logp = sequence_logps(model, batch)
    with torch.no_grad():
        ref = sequence_logps(model, batch)
    assert torch.allclose(logp.detach(), ref)
    # chosen == rejected: the DPO margin is zero whatever the weights, and so is every gradient.
    dpo_loss(logp[:2], logp[2:], ref[:2], ref[2:], 0.1).loss.backward()
    assert max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) < 1e-7


def test_sequence_logps_sum_only_the_response_tokens():
    torch.manual_seed(0)
    model = Decoder(config_from_name("debug")).eval()
    prompt, reply = [2, 30, 31, 32], [40, 41]
    got = sequence_logps(model, response_batch([(prompt, reply), ([2, 5], [6, 7, 8, 9])]))[0]
    logits = model(torch.tensor([prompt + reply])).logits[0].float().log_softmax(-1)
    expected = logits[3, 40] + logits[4, 41]
    assert got.item() == pytest.approx(expected.item(), abs=1e-4)


def test_bradley_terry_ranks_a_separable_toy_set_perfectly():
    torch.manual_seed(0)
    model = RewardModel(Decoder(config_from_name("debug")))
    # Chosen replies end with token 100, rejected ones with 200; everything else is random.
    g = torch.Generator().manual_seed(1)
    rows_c, rows_r = [], []
    for _ in range(16):
        prefix = torch.randint(40, 90, (6,), generator=g).tolist()
        rows_c.append((prefix, [100]))
        rows_r.append((prefix, [200]))
    batch = response_batch(rows_c + rows_r)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(25):
        r = model(batch["input_ids"], batch["attention_mask"])
        loss = bradley_terry_loss(r[:16], r[16:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_c = [(torch.randint(40, 90, (5,), generator=g).tolist(), [100]) for _ in range(16)]
    held_r = [(p, [200]) for p, _ in held_c]
    sc, sr = model.score(held_c), model.score(held_r)
    assert (sc > sr).all(), (sc, sr)
    assert loss.item() < 0.05
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))


def test_rloo_advantages_and_kl_penalty():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    adv = rloo_advantages(r)
    assert adv.flatten().tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 0, 0, 0])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    loss, metrics = rloo_loss(logp, ref, r, kl_coef=1.0)
    # Penalised rewards: row 0 = r - (logp - ref) = [1, 3, 5] -> advantages [-3, 0, 3]; row 1 all zero.
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([3 / 6, 0.0, -3 / 6, 0.0, 0.0, 0.0])
    assert metrics["kl"].item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.zeros(3, 1))
