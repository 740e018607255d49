"""Vector quantization with gradients that flow through the codebook lookup (the rotation trick)."""

from tessera.quantize.estimators import rotation_trick, straight_through
from tessera.quantize.metrics import code_usage, codebook_metrics, perplexity
from tessera.quantize.search import nearest_codes
from tessera.quantize.vector_quantizer import QuantizerOutput, VectorQuantizer

__all__ = [
    "rotation_trick",
    "straight_through",
    "VectorQuantizer",
    "QuantizerOutput",
    "nearest_codes",
    "code_usage",
    "perplexity",
    "codebook_metrics",
]
