"""Tessera: multimodal in-context learning on discrete visual tokens.

Parts: `tessera.quantize` (rotation-trick vector quantization), `tessera.tokenizer` (image and video tokenizers),
`tessera.lm` (Gemini-style multimodal decoders), `tessera.icl` (CAML few-shot classification).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
