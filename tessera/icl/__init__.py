"""CAML: universal in-context few-shot image classification on frozen features, with its baselines.

    from tessera.icl import FewShotClassifier
    clf = FewShotClassifier.from_pretrained()                      # tessera-resnet-s features + the shipped CAML
    probs, classes = clf.classify(support_images, labels, query_images)

Modules: `elmes` (the label encoder), `model` (CAML, exact and amortized attention), `episodes` (sampling and
first-appearance labels), `embeddings` (cached frozen features), `baselines` (ProtoNet, SimpleShot, kNN, MetaOpt SVM,
MetaQDA, SNAIL, GPICL), `zoo` (build/save/load), `predict` (the classifier used by `tessera icl predict`),
`suite` (the embedded few-shot datasets), `benchmarks` (loaders for the paper's benchmark folders).
"""

from tessera.icl.elmes import elmes
from tessera.icl.episodes import Episode, first_appearance_labels, fixed_episodes, sample_episode
from tessera.icl.model import CAML, CAML_PRESETS, CAMLConfig, CAMLOutput, CheckpointMismatchError
from tessera.icl.predict import FewShotClassifier

__all__ = [
    "elmes",
    "CAML",
    "CAMLConfig",
    "CAMLOutput",
    "CAML_PRESETS",
    "CheckpointMismatchError",
    "Episode",
    "first_appearance_labels",
    "fixed_episodes",
    "sample_episode",
    "FewShotClassifier",
]
