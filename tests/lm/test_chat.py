"""The chat template: one definition, round trip through the Processor, and the SFT loss mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.lm.chat import END_OF_TURN, encode_chat, end_of_turn_id, parse_chat, render_chat
from tessera.lm.corpus import CorpusConfig, build_corpus
from tessera.lm.objective import IGNORE, pack_documents
from tessera.lm.posttrain_data import ChatEncoder, SFTBatches, sample_example
from tessera.lm.processor import Processor


@pytest.fixture(scope="module")
def corpus(image_tokenizer):
    return build_corpus(CorpusConfig(train_scenes=60, test_scenes=30, glyph_train_renders=1, glyph_test_renders=1), image_tokenizer)


def test_template_round_trips_text_and_images(vocab, image_tokenizer):
    proc = Processor(vocab, image_tokenizer)
    image = torch.zeros(3, 32, 32)
    image[0, :16, :16] = 1.0  # a red square at the top left on black
    messages = [
        {"role": "user", "content": [image, "what colour is the shape at the top left?"]},
        {"role": "model", "content": "red."},
        {"role": "user", "content": "and where is it?"},
        {"role": "model", "content": "the top left. <end_of_turn> is plain text here"},
    ]
    enc = proc.apply_chat_template(messages, add_generation_prompt=False)
    assert enc.ids[0] == vocab.bos_id and enc.ids.count(end_of_turn_id(vocab)) == 4  # typed markers stay text
    back = proc.parse_chat(enc.ids)
    assert [m["role"] for m in back] == ["user", "model", "user", "model"]
    assert back[1]["content"] == "red." and back[2]["content"] == "and where is it?"
    assert back[3]["content"] == messages[3]["content"]
    img, text = back[0]["content"]
    assert text == messages[0]["content"][1]
    assert torch.allclose(img, image_tokenizer.decode(image_tokenizer.encode(image[None]))[0])  # the same codes
    # The generation prompt opens a model turn; a reply closed by <end_of_turn> parses as that turn.
    prompt = proc.apply_chat_template(messages[:1], add_generation_prompt=True).ids
    reply = vocab.encode_text("blue.") + [end_of_turn_id(vocab)]
    parsed = proc.parse_chat(prompt + reply)
    assert parsed[-1] == {"role": "model", "content": "blue."}
    assert render_chat(messages[:2], add_generation_prompt=True) == (
        "<start_of_turn>user\n<image>what colour is the shape at the top left?<end_of_turn>\n"
        "<start_of_turn>model\nred.<end_of_turn>\n<start_of_turn>model\n")


def test_bad_conversations_are_clear_errors(vocab):
    item = vocab.encode_text
    with pytest.raises(ValueError, match="role 'system'"):
        encode_chat([{"role": "system", "content": "x"}], vocab, item)
    with pytest.raises(ValueError, match="empty"):
        encode_chat([], vocab, item)
    with pytest.raises(ValueError, match="malformed chat turn header"):
        ids = [vocab.token_id("<start_of_turn>"), *vocab.encode_text("robot\nhi"), vocab.token_id(END_OF_TURN)]
        parse_chat(ids, vocab, lambda x: [vocab.decode_text(x)])


def test_sft_targets_are_exactly_the_model_turns(vocab, corpus):
    enc = ChatEncoder(corpus, vocab)
    rng = np.random.default_rng(0)
    ex = sample_example(corpus, rng, "train", "multiturn")
    ids, mods = enc.document(ex.messages)
    batch, used = pack_documents([(ids, mods)], len(ids) + 4, 1)
    assert used == 1
    targets = batch["targets"][0]
    learned = targets[targets != IGNORE].tolist()
    expected = [t for m in ex.messages if m["role"] == "model" for t in enc.reply_ids(m["content"])]
    assert learned == expected  # model turns + their <end_of_turn>, nothing else
    # No user-turn token (text or image code) is ever a target.
    user_tokens = set()
    for m in ex.messages:
        if m["role"] == "user":
            for x in m["content"]:
                user_tokens.update(enc.item(x))
    assert not (set(learned) & (user_tokens - set(expected)))
    # The same holds in packed training batches: every target position lies inside a model turn.
    b = SFTBatches(corpus, vocab, 256, 2, seed=1)(0)
    start, end = vocab.token_id("<start_of_turn>"), end_of_turn_id(vocab)
    for row_ids, row_t in zip(b["input_ids"], b["targets"], strict=True):
        role_model = torch.zeros_like(row_ids, dtype=torch.bool)
        model_id = vocab.encode_text("model\n")
        inside = False
        for i, t in enumerate(row_ids.tolist()):
            if t == start:
                inside = row_ids[i + 1 : i + 1 + len(model_id)].tolist() == model_id
                header_end = i + len(model_id)
            elif inside and i > header_end:
                role_model[i] = True
                if t == end:
                    inside = False
        next_is_model = torch.zeros_like(role_model)
        next_is_model[:-1] = role_model[1:]
        assert ((row_t != IGNORE) <= next_is_model).all()
        assert (row_t != IGNORE).sum() > 0
