"""Evaluation metrics: caption slot scoring and the probe's scoring against known scenes."""

from __future__ import annotations

import torch

from tessera.lm import scenes as S
from tessera.lm.evaluate import caption_slots
from tessera.lm.probe import probe_scores, scene_targets


def _scene() -> S.Scene:
    return S.Scene((S.SceneObject("red", "circle", "large", 0), S.SceneObject("blue", "cross", "small", 3)))


def test_caption_slots():
    scene = _scene()
    assert caption_slots(S.caption(scene), scene) == (9, 9)  # count + 2 objects x (position, size, colour, shape)
    wrong_colour = S.caption(scene).replace("blue", "green")
    assert caption_slots(wrong_colour, scene) == (8, 9)
    assert caption_slots("a large red circle at the top left.", scene) == (4, 9)  # one object missing, count wrong
    assert caption_slots("nothing useful", scene) == (0, 9)


def test_probe_scores_count_requested_attributes():
    target = scene_targets([_scene()])
    perfect = probe_scores({k: v.clamp_min(0) for k, v in target.items()}, target)
    assert perfect["all"] == 1.0
    blank = {"color": torch.zeros(1, 4, dtype=torch.long), "shape": torch.zeros(1, 4, dtype=torch.long),
             "size": torch.zeros(1, 4, dtype=torch.long)}
    scores = probe_scores(blank, target)
    assert scores["color"] == 0.0 and scores["empty"] == 1.0
    assert abs(scores["all"] - (2 + 1 + 1) / 8) < 1e-6  # 2 empty cells; by luck the circle (shape 0), the small cross (size 0)
