"""The in-domain meta-trained reference (P>M>F-style upper line) for the universal benchmark.

P>M>F (Hu et al. 2022: Pre-training -> Meta-training -> Fine-tuning) meta-trains a ProtoNet on each benchmark's own
training classes, fine-tuning the whole pretrained backbone; CAML compares against it as the in-domain upper line
(papers-digest B4). Here: start from the frozen extractor's network, meta-train it as a cosine ProtoNet with a learned
temperature (P>M>F's classifier, init 10) on episodes of the held-out dataset's `train` classes, then evaluate the
resulting embedding with the same nearest-prototype rule on the usual test episodes. BatchNorm statistics stay frozen
(episodes of 50 images are too small to re-estimate them); no augmentation; Adam.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from tessera.features.resnet import TesseraResNetExtractor
from tessera.icl.episodes import class_index, episode_rng, sample_episode
from tessera.icl.suite._store import FewShotImages

__all__ = ["finetune_protonet"]


def finetune_protonet(
    ext: TesseraResNetExtractor,
    train: FewShotImages,
    steps: int = 300,
    way: int = 5,
    shot: int = 5,
    query: int = 5,
    lr: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
) -> tuple[TesseraResNetExtractor, list[float]]:
    """Meta-train a copy of `ext`'s network as a cosine ProtoNet on `train`'s classes; returns it and the losses."""
    from tqdm.auto import tqdm

    if not isinstance(ext, TesseraResNetExtractor):
        raise TypeError("the P>M>F reference fine-tunes Tessera feature networks only")
    net = copy.deepcopy(ext.net)
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()  # frozen BatchNorm statistics; weights still train
    scale = torch.nn.Parameter(torch.tensor(10.0))
    opt = torch.optim.Adam([*net.parameters(), scale], lr=lr)
    classes = class_index(train.labels)
    way = min(way, len(classes))
    losses = []
    torch.manual_seed(seed)
    for step in tqdm(range(steps), desc=f"P>M>F {train.name}", disable=not progress, leave=False):
        ep = sample_episode(classes, way, shot, query, episode_rng(seed, step), min_query=1)
        idx = np.concatenate([ep.support, ep.query])
        x = (train.to_tensor(idx) - ext.mean) / ext.std
        z = net(x)
        s, q = z[: len(ep.support)], z[len(ep.support) :]
        lab = torch.from_numpy(ep.support_labels)
        protos = torch.zeros(way, z.shape[1]).index_add(0, lab, s) / torch.bincount(lab, minlength=way).unsqueeze(1)
        logits = scale * F.normalize(q, dim=1) @ F.normalize(protos, dim=1).T
        loss = F.cross_entropy(logits, torch.from_numpy(ep.query_labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    tuned = TesseraResNetExtractor(ext.cfg, net)
    tuned.name = f"{ext.name}+pmf:{train.name}"
    return tuned, losses
