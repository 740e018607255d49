"""Evaluation of a trained multimodal decoder on the held-out split of the embedded corpus.

Axis legend: B batch, T tokens, V vocabulary, G grid cells.

- Caption accuracy (attribute match): greedy caption of a test scene (held-out colour-shape pairs), parsed back
  into objects; slots = for each true object its presence at its position plus its size, colour and shape, plus the
  object count. Chance: captions of random training scenes scored the same way.
- VQA accuracy: greedy answer == the canonical answer; chance = 1 / |answers| of each question type, averaged.
- Caption-to-image fidelity: the model draws (constrained decoding: `<boi>`, exactly h*w codes, `<eoi>`) for the
  caption of a test scene; the image tokenizer decodes it; `tessera.lm.probe` recognises each cell's attributes.
  Chance: the probe's score of real renders of *other* test scenes against the requested captions. Ceilings: the
  probe on real renders of the requested scenes and on their tokenizer reconstructions.
- Few-shot in-context classification: N-way K-shot episodes from the test pools with label words from the test
  word set, answered by ranking each class's label continuation by log-likelihood; chance 1/N.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tessera.lm import scenes as S
from tessera.lm.corpus import Corpus, ImageRef, episode
from tessera.lm.data import DocumentEncoder
from tessera.lm.generate import ModalityConstraint, generate
from tessera.lm.model import Decoder
from tessera.lm.processor import Processor

__all__ = [
    "caption_slots",
    "caption_accuracy",
    "vqa_accuracy",
    "generation_fidelity",
    "fewshot_accuracy",
    "score_continuations",
]


def caption_slots(text: str, scene: S.Scene) -> tuple[int, int]:
    """(correct, total) attribute slots of a caption against the true scene."""
    pred = S.parse_caption(text)
    correct, total = 0, 1
    correct += int(len(pred) == len(scene.objects))
    for o in scene.objects:
        total += 4
        got = pred.get(o.position)
        if got is None:
            continue
        correct += 1 + int(got[0] == o.size) + int(got[1] == o.color) + int(got[2] == o.shape)
    return correct, total


def _test_refs(corpus: Corpus, n: int, seed: int) -> list[ImageRef]:
    pool = corpus.pools[("scenes", "test")]
    idx = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    return [ImageRef("scenes", "test", int(i)) for i in idx]


@torch.no_grad()
def _greedy_batch(model: Decoder, processor: Processor, prompts: list[list[int]], max_new: int, stop: Sequence[int]) -> list[list[int]]:
    batch = processor.collate(prompts)
    constraint = ModalityConstraint(processor.vocab, processor.image_tokens, allow_images=False)
    out = generate(model, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=max_new,
                   stop_tokens=stop, constraint=constraint)
    return [out.tokens[b, : int(out.lengths[b])].tolist() for b in range(len(prompts))]


@torch.no_grad()
def caption_accuracy(model: Decoder, processor: Processor, corpus: Corpus, n: int = 200, batch_size: int = 50, seed: int = 0) -> dict[str, float]:
    """Greedy captions of `n` test scenes: attribute-slot accuracy, exact match and the empirical chance line."""
    enc = DocumentEncoder(corpus, processor.vocab)
    refs = _test_refs(corpus, n, seed)
    correct = total = exact = 0
    for start in range(0, len(refs), batch_size):
        chunk = refs[start : start + batch_size]
        prompts = [[processor.vocab.bos_id, *enc.segment_ids(r), *enc.segment_ids("caption:")] for r in chunk]
        outs = _greedy_batch(model, processor, prompts, 64, [processor.vocab.eos_id])
        for r, ids in zip(chunk, outs, strict=True):
            text = processor.vocab.decode_text(ids).strip()
            scene = corpus.scene(r)
            c, t = caption_slots(text, scene)
            correct, total = correct + c, total + t
            exact += int(text == S.caption(scene))
    # Chance: a caption drawn from the training prior, ignoring the image.
    rng = np.random.default_rng([seed, 7])
    train_pool = corpus.pools[("scenes", "train")].items
    cc = ct = 0
    for r in refs:
        c, t = caption_slots(S.caption(train_pool[int(rng.integers(len(train_pool)))]), corpus.scene(r))
        cc, ct = cc + c, ct + t
    return {"attribute_accuracy": correct / total, "exact_match": exact / len(refs), "chance": cc / ct, "n": len(refs)}


@torch.no_grad()
def vqa_accuracy(model: Decoder, processor: Processor, corpus: Corpus, n: int = 300, batch_size: int = 50, seed: int = 0) -> dict[str, float]:
    """Greedy answers to `n` questions about test scenes; accuracy overall and per type, with the chance line."""
    enc = DocumentEncoder(corpus, processor.vocab)
    refs = _test_refs(corpus, n, seed)
    rng = np.random.default_rng([seed, 11])
    items = []
    for i, r in enumerate(refs):
        qtype = S.QUESTION_TYPES[i % len(S.QUESTION_TYPES)]
        items.append((r, *S.sample_question(corpus.scene(r), rng, qtype)))
    hits: dict[str, list[int]] = {}
    chance: list[float] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = [[processor.vocab.bos_id, *enc.segment_ids(r), *enc.segment_ids(f"question: {q} answer:")] for r, _, q, _ in chunk]
        outs = _greedy_batch(model, processor, prompts, 8, [processor.vocab.eos_id])
        for (_r, qtype, _q, a), ids in zip(chunk, outs, strict=True):
            got = processor.vocab.decode_text(ids).strip().rstrip(".").strip()
            hits.setdefault(qtype, []).append(int(got == a))
            chance.append(1.0 / len(S.answer_choices(qtype)))
    flat = [h for v in hits.values() for h in v]
    out = {"accuracy": float(np.mean(flat)), "chance": float(np.mean(chance)), "n": len(flat)}
    out.update({f"accuracy/{k}": float(np.mean(v)) for k, v in hits.items()})
    return out


@torch.no_grad()
def generation_fidelity(
    model: Decoder,
    processor: Processor,
    corpus: Corpus,
    probe,
    n: int = 100,
    batch_size: int = 25,
    seed: int = 0,
    temperature: float = 0.0,
    top_k: int = 0,
) -> dict[str, float]:
    """Draw images for `n` test captions and score them with the probe (with chance and ceiling lines).

    Decoding is greedy by default; `temperature` > 0 samples (optionally from the `top_k` most likely codes).
    """
    from tessera.lm.generate import SamplingConfig
    from tessera.lm.probe import probe_scores, scene_targets

    enc = DocumentEncoder(corpus, processor.vocab)
    refs = _test_refs(corpus, n, seed)
    scenes = [corpus.scene(r) for r in refs]
    images = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(refs), batch_size):
        chunk = scenes[start : start + batch_size]
        prompts = [[processor.vocab.bos_id, *enc.segment_ids("draw: " + S.caption(s))] for s in chunk]
        batch = processor.collate(prompts)
        constraint = ModalityConstraint(processor.vocab, processor.image_tokens, force_image=True, stop_after_image=True)
        out = generate(model, batch["input_ids"], attention_mask=batch["attention_mask"],
                       max_new_tokens=processor.image_tokens + 2, stop_tokens=[processor.vocab.eos_id],
                       constraint=constraint, sampling=SamplingConfig(temperature=temperature, top_k=top_k), generator=gen)
        h, w = processor.grid
        codes = processor.vocab.ids_to_codes(out.tokens[:, 1 : 1 + h * w]).reshape(len(chunk), h, w)
        images.append(processor.decode_codes(codes))
    generated = torch.cat(images)
    target = scene_targets(scenes)
    result = {f"fidelity/{k}": v for k, v in probe_scores(probe.predict(generated), target).items()}
    real = torch.from_numpy(np.stack([corpus.image(r) for r in refs])).permute(0, 3, 1, 2).float() / 255
    result.update({f"real/{k}": v for k, v in probe_scores(probe.predict(real), target).items()})
    recon = processor.decode_codes(torch.from_numpy(np.stack([corpus.codes(r) for r in refs]).astype(np.int64)))
    result.update({f"reconstruction/{k}": v for k, v in probe_scores(probe.predict(recon), target).items()})
    shuffled = torch.roll(real, shifts=1, dims=0)  # real renders of other scenes: what ignoring the caption scores
    result.update({f"chance/{k}": v for k, v in probe_scores(probe.predict(shuffled), target).items()})
    result["n"] = len(refs)
    return result


@torch.no_grad()
def score_continuations(model: Decoder, prefix: list[int], continuations: list[list[int]]) -> list[float]:
    """Total log-probability of each continuation after `prefix` (one batched forward pass)."""
    rows = [prefix + c for c in continuations]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    device = model.embed_tokens.weight.device
    logp = F.log_softmax(model(ids.to(device), attention_mask=mask.to(device)).logits.float(), -1).cpu()
    scores = []
    for i, c in enumerate(continuations):
        start = len(prefix)
        tgt = torch.tensor(c)
        scores.append(float(logp[i, start - 1 : start - 1 + len(c)].gather(-1, tgt[:, None]).sum()))
    return scores


@torch.no_grad()
def fewshot_accuracy(
    model: Decoder,
    processor: Processor,
    corpus: Corpus,
    shots: Sequence[int] = (1, 2, 3),
    ways: int = 2,
    episodes: int = 100,
    source: str = "scenes",
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of N-way K-shot episodes (test pools, test label words) for each K, by label log-likelihood."""
    enc = DocumentEncoder(corpus, processor.vocab)
    out: dict[str, float] = {"chance": 1.0 / ways, "ways": ways, "episodes": episodes}
    for k in shots:
        rng = np.random.default_rng([seed, k, 31])
        hits = 0
        for _ in range(episodes):
            doc = episode(corpus, rng, ways, k, "test", source=source)
            prefix = [processor.vocab.bos_id]
            for seg in doc.segments[:-1]:
                prefix += enc.segment_ids(seg)
            conts = [enc.segment_ids(f" {w}.") for w in doc.meta["labels"]]
            scores = score_continuations(model, prefix, conts)
            hits += int(doc.meta["labels"][int(np.argmax(scores))] == doc.meta["answer"])
        out[f"{k}-shot"] = hits / episodes
    return out
