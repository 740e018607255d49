"""Gemini-style multimodal decoders: one vocabulary of text pieces, special tokens and image codes.

- `tessera.lm.vocab`: the vocabulary (SentencePiece text pieces + specials + image codes), in one place.
- `tessera.lm.model`: the decoder (`Decoder`, `DecoderConfig`, presets nano/pro/ultra/debug and Gemma shapes).
- `tessera.lm.processor`: interleaved strings and images <-> ids.
- `tessera.lm.generate`: KV-cached sampling, stop tokens, streaming, image-block constrained decoding.
- `tessera.lm.hf`: Hugging Face Gemma checkpoints in and out (`from_hf`, `to_hf`).
- `tessera.lm.scenes`, `glyphs`, `corpus`, `data`, `objective`: the embedded corpus and next-token training.
"""

from tessera.lm.generate import GenerationOutput, ModalityConstraint, SamplingConfig, generate, stream_generate
from tessera.lm.hf import from_hf, to_hf
from tessera.lm.model import PRESETS, Decoder, DecoderConfig, DecoderOutput, KVCache, config_from_name, list_presets
from tessera.lm.pretrained import load_pretrained, save_pretrained
from tessera.lm.processor import Encoding, Processor
from tessera.lm.vocab import SPECIAL_TOKENS, Vocabulary, train_text_tokenizer

__all__ = [
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "KVCache",
    "PRESETS",
    "config_from_name",
    "list_presets",
    "Vocabulary",
    "SPECIAL_TOKENS",
    "train_text_tokenizer",
    "Processor",
    "Encoding",
    "SamplingConfig",
    "ModalityConstraint",
    "GenerationOutput",
    "generate",
    "stream_generate",
    "from_hf",
    "to_hf",
    "load_pretrained",
    "save_pretrained",
]
