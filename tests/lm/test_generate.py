"""Generation: constrained image blocks, sampling filters, stop tokens, streaming."""

from __future__ import annotations

import torch

from tessera.lm.generate import ModalityConstraint, SamplingConfig, generate, sample_next, stream_generate
from tessera.lm.model import Decoder, config_from_name
from tessera.lm.processor import Processor


def _model(vocab) -> Decoder:
    torch.manual_seed(0)
    return Decoder(config_from_name("debug", vocab_size=vocab.size)).eval()


def test_constrained_decoding_writes_a_well_formed_image_block(vocab, image_tokenizer):
    proc = Processor(vocab, image_tokenizer)
    model = _model(vocab)
    prompt = torch.tensor([proc.encode("draw: a large red circle at the top left.").ids])
    for sampling in (SamplingConfig(), SamplingConfig(temperature=1.5, top_k=50)):
        c = ModalityConstraint(vocab, proc.image_tokens, force_image=True, stop_after_image=True)
        out = generate(model, prompt.repeat(3, 1), max_new_tokens=80, constraint=c, sampling=sampling,
                       generator=torch.Generator().manual_seed(1))
        for row in out.tokens:
            row = row[: 66].tolist()
            assert row[0] == vocab.boi_id and row[-1] == vocab.eoi_id
            assert all(vocab.is_code(torch.tensor(row[1:-1])))
        assert out.lengths.tolist() == [66, 66, 66]
        images = proc.decode(out.tokens[0, :66])
        assert len(images) == 1 and images[0].shape == (3, 32, 32)


def test_prompt_ending_inside_a_block_continues_it(vocab, image_tokenizer):
    Processor(vocab, image_tokenizer)  # raises unless the fixtures agree on the image codebook size
    model = _model(vocab)
    lo = vocab.image_offset
    prompt = torch.tensor([[vocab.bos_id, vocab.boi_id] + [lo + 1] * 10])
    c = ModalityConstraint(vocab, 64, stop_after_image=True)
    out = generate(model, prompt, max_new_tokens=100, constraint=c)
    row = out.tokens[0, : out.lengths[0]].tolist()
    assert len(row) == 55 and row[-1] == vocab.eoi_id and all(lo <= t < lo + 512 for t in row[:-1])


def test_text_mode_never_emits_codes_or_images_when_disabled(vocab):
    model = _model(vocab)
    c = ModalityConstraint(vocab, 64, allow_images=False)
    out = generate(model, torch.tensor([[2, 100, 200]]), max_new_tokens=40, constraint=c, stop_tokens=(),
                   sampling=SamplingConfig(temperature=2.0), generator=torch.Generator().manual_seed(0))
    toks = out.tokens[0]
    assert not vocab.is_code(toks).any() and not (toks == vocab.boi_id).any() and not (toks == vocab.pad_id).any()


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, SamplingConfig(), g).item() == 1
    assert all(sample_next(logits, SamplingConfig(temperature=1.0, top_k=1), g).item() == 1 for _ in range(20))
    assert all(sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.01), g).item() == 1 for _ in range(20))
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_k=2), g).item() for _ in range(200)}
    assert draws == {1, 2}
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.6), g).item() for _ in range(200)}
    assert draws == {1, 2}  # 0.51 + 0.47 >= 0.6 needs both


def test_stop_tokens_and_streaming(vocab):
    model = _model(vocab)
    prompt = torch.tensor([[2, 50, 60, 70]])
    free = generate(model, prompt, max_new_tokens=12, stop_tokens=())
    stop = int(free.tokens[0, 4])
    out = generate(model, prompt, max_new_tokens=12, stop_tokens=(stop,))
    first = free.tokens[0].tolist().index(stop)
    assert out.lengths.item() == first + 1 and out.tokens[0, first + 1 :].eq(0).all()
    streamed = [int(t) for t in stream_generate(model, prompt, max_new_tokens=12, stop_tokens=())]
    assert streamed == free.tokens[0].tolist()
