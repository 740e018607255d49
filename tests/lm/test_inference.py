"""Best-of-N by reward and uncertainty-routed chain of thought."""

from __future__ import annotations

import pytest
import torch

from tessera.lm.generate import SamplingConfig
from tessera.lm.inference import best_of_n, evaluate_replies, route_answer, routed_cot, sample_replies, tune_threshold
from tessera.lm.model import Decoder, config_from_name
from tessera.lm.posttrain_data import HEDGE, REFUSAL, ChatExample
from tessera.lm.reward import RewardModel


@pytest.fixture(scope="module")
def models(vocab):
    torch.manual_seed(0)
    policy = Decoder(config_from_name("debug", vocab_size=vocab.size, max_seq_len=256)).eval()
    reward = RewardModel(Decoder(config_from_name("debug", vocab_size=vocab.size, max_seq_len=256))).eval()
    torch.nn.init.normal_(reward.head.weight, std=1.0)  # a random but informative head: rewards differ per reply
    return policy, reward


def _prompts(vocab):
    start = vocab.token_id("<start_of_turn>")
    return [[vocab.bos_id, start, *vocab.encode_text(f"user\nhow many shapes are there? {i}"), vocab.token_id("<end_of_turn>"),
             start, *vocab.encode_text("model\n")] for i in range(3)]


def test_best_of_n_returns_the_highest_reward_sample(vocab, models):
    policy, reward = models
    prompts = _prompts(vocab)
    out = best_of_n(policy, reward, vocab, prompts, n=5, sampling=SamplingConfig(temperature=1.5), max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0))
    assert len(out) == 3
    for p, o in zip(prompts, out, strict=True):
        assert len(o.replies) == 5 and len({tuple(r) for r in o.replies}) > 1  # the samples differ
        rescored = reward.score([(p, r) for r in o.replies])
        assert rescored.tolist() == pytest.approx(o.rewards, abs=1e-5)  # batched scores = scores one by one
        assert o.reply == o.replies[int(torch.tensor(o.rewards).argmax())]
        assert max(o.rewards) == pytest.approx(float(reward.score([(p, o.reply)])[0]), abs=1e-5)


def test_route_answer_majority_and_greedy_fallback():
    assert route_answer(["3", "3", "3", "4"], "5", threshold=0.7) == ("3", "majority", 0.75)
    assert route_answer(["3", "4", "5", "3"], "5", threshold=0.7) == ("5", "greedy", 0.5)  # disagreement: greedy
    assert route_answer(["", "", ""], "2", threshold=0.0) == ("2", "greedy", 0.0)  # no parsable answer votes
    with pytest.raises(ValueError):
        route_answer([], "1", 0.5)


def test_routed_cot_falls_back_to_greedy_under_disagreement(vocab, models):
    policy, _ = models
    prompts = _prompts(vocab)
    extract = lambda text: text[:2]  # noqa: E731 - an untrained model writes noise; its first characters disagree
    greedy = sample_replies(policy, vocab, prompts, n=1, max_new_tokens=6)
    out = routed_cot(policy, vocab, prompts, extract, k=6, threshold=0.99, sampling=SamplingConfig(temperature=2.0),
                     max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    for g, r in zip(greedy, out, strict=True):
        assert r.agreement < 0.99 and r.route == "greedy"
        assert r.reply == g[0] and r.answer == extract(vocab.decode_text(g[0]))
    # With threshold 0 the majority always wins (and agrees with one of the samples).
    out0 = routed_cot(policy, vocab, prompts, extract, k=6, threshold=0.0, sampling=SamplingConfig(temperature=2.0),
                      max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    assert all(r.route == "majority" for r in out0)


def test_threshold_tuning_picks_the_best_validation_split():
    agreements = [1.0, 0.9, 0.5, 0.3, 0.2]
    majority = [True, True, False, False, True]
    greedy = [False, True, True, True, False]
    t, acc = tune_threshold(agreements, majority, greedy, grid=[0.0, 0.4, 0.6, 1.01])
    assert (t, acc) == (0.6, 0.8)  # majority for 1.0, 0.9; greedy below: 4 of 5 right


def test_evaluate_replies_columns():
    ex = [ChatExample("count", [], "two.", "exact"), ChatExample("count", [], "one.", "exact"),
          ChatExample("reasoning", [], "3", "final"), ChatExample("unanswerable", [], HEDGE, "hedge"),
          ChatExample("policy", [], REFUSAL, "refuse"), ChatExample("benign", [], "four.", "exact")]
    m = evaluate_replies(ex, ["two.", HEDGE, "1 + 2 = 3. answer: 3.", "large.", REFUSAL, REFUSAL])
    assert m["instruction_accuracy"] == 0.5 and m["reasoning_accuracy"] == 1.0
    assert m["inaccuracy_rate"] == 0.0  # the hedge on an answerable prompt is not an inaccuracy
    assert m["hedging_accuracy"] == 0.0 and m["refusal_rate"] == 1.0 and m["over_refusal_rate"] == 1.0
