"""A reward model on the decoder: the transformer's final hidden state at the last token, through a linear head.

Axis legend: B rows, T tokens, D embed_dim.

Initialised from the supervised-tuned decoder (as in the Gemini/InstructGPT recipes) and trained with the
Bradley-Terry loss on preference pairs (`tessera.lm.preference.bradley_terry_loss`). A reply is scored as the
conversation (chat template, generation prompt) followed by the reply and its `<end_of_turn>`.

Folder layout: the decoder's config.json + model.safetensors, the processor's files, and reward_head.safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tessera.lm._io import load_safetensors, save_safetensors
from tessera.lm.model import Decoder
from tessera.lm.preference import response_batch

__all__ = ["RewardModel"]


class RewardModel(nn.Module):
    """Scalar reward of a token sequence.

    Args:
        decoder: the transformer (its output projection is unused).
    """

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.head = nn.Linear(decoder.cfg.embed_dim, 1)
        nn.init.zeros_(self.head.weight)  # start at reward 0 for everything: Bradley-Terry grows the head from there
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {f"decoder.{n}" for n in self.decoder.no_weight_decay()} | {"head.bias"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) rewards; rows may be left- or right-padded (the last real token is read)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        out = self.decoder(input_ids, attention_mask=attention_mask, compute_logits=False)
        B, T = input_ids.shape
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=input_ids.device)
        else:
            pos = torch.arange(T, device=input_ids.device).expand(B, T)
            last = pos.masked_fill(~attention_mask.bool(), -1).amax(1)
        h = out.hidden[torch.arange(B, device=input_ids.device), last]  # (B, D)
        return self.head(h.float()).squeeze(-1)

    @torch.no_grad()
    def score(self, rows: Sequence[tuple[list[int], list[int]]], batch_size: int = 32) -> torch.Tensor:
        """(N,) rewards of (prompt ids, reply ids) rows."""
        device = self.head.weight.device
        out = []
        for s in range(0, len(rows), batch_size):
            b = response_batch(rows[s : s + batch_size])
            out.append(self(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # -- persistence ------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.decoder.save_pretrained(folder)
        save_safetensors(folder / "reward_head.safetensors", {"weight": self.head.weight, "bias": self.head.bias})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> RewardModel:
        """Load a folder written by `save_pretrained`.

        Raises:
            FileNotFoundError: not a reward-model folder (no reward_head.safetensors).
        """
        folder = Path(folder)
        if not (folder / "reward_head.safetensors").is_file():
            raise FileNotFoundError(f"{folder}: not a reward model folder (no reward_head.safetensors)")
        model = cls(Decoder.from_pretrained(folder))
        head = load_safetensors(folder / "reward_head.safetensors")
        if set(head) != {"weight", "bias"} or tuple(head["weight"].shape) != tuple(model.head.weight.shape):
            raise ValueError(f"{folder}/reward_head.safetensors does not fit the decoder (embed_dim {model.decoder.cfg.embed_dim})")
        model.head.load_state_dict(head)
        return model
