"""The chat template of Tessera's decoders, defined in this one place (Gemma's turn format).

Axis legend: T tokens.

A conversation is a list of messages `{"role": "user" | "model", "content": str | [str | image, ...]}`, rendered as

    <bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n{content}<end_of_turn>\\n...

and, to ask the model for its next turn, `<start_of_turn>model\\n` at the end (the generation prompt). The model
ends its turn with `<end_of_turn>`, which is the stop token of chat generation (`end_of_turn_id`).

Training mask. In supervised tuning only what the model says is learned: the content of model turns and the
`<end_of_turn>` that closes them are targets; user turns (their text and images), turn headers and `<bos>` are not.
`encode_chat` returns, per token, whether it is such a target (`ChatEncoding.target_mask`); a token t is predicted
from the tokens before it, so the loss for position i uses target_mask[i + 1].

Content items are strings or images; how an image becomes ids is the caller's `encode_item` (the `Processor`
tokenizes pixels, the post-training data reads cached codes), so the template itself never touches pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from tessera.lm.vocab import Vocabulary

__all__ = [
    "ROLES",
    "START_OF_TURN",
    "END_OF_TURN",
    "ChatEncoding",
    "encode_chat",
    "parse_chat",
    "render_chat",
    "check_messages",
    "end_of_turn_id",
]

ROLES = ("user", "model")
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


class ChatEncoding(NamedTuple):
    """Ids of a rendered conversation and, per token, whether supervised tuning learns it."""

    ids: list[int]
    target_mask: list[bool]  # True on model-turn content and the <end_of_turn> closing a model turn


def end_of_turn_id(vocab: Vocabulary) -> int:
    """Id of `<end_of_turn>`: the stop token of chat generation."""
    return vocab.token_id(END_OF_TURN)


def _content(message: Any, index: int) -> list[Any]:
    content = message["content"]
    items = [content] if isinstance(content, str) else list(content)
    if not items:
        raise ValueError(f"message {index} has empty content")
    return items


def check_messages(messages: Sequence[dict]) -> None:
    """Raise a clear error unless `messages` is a list of {"role", "content"} dicts with known roles.

    Raises:
        ValueError / TypeError: empty conversation, unknown role, missing keys or empty content.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one turn")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; chat roles are {ROLES}")
        _content(m, i)


def encode_chat(
    messages: Sequence[dict],
    vocab: Vocabulary,
    encode_item: Callable[[Any], list[int]],
    *,
    add_generation_prompt: bool = False,
    add_bos: bool = True,
) -> ChatEncoding:
    """Render `messages` with the chat template.

    Args:
        messages: the conversation (see the module docstring).
        vocab: the vocabulary (for the turn markers).
        encode_item: ids of one content item (a string or an image).
        add_generation_prompt: end with `<start_of_turn>model\\n`, so the model writes the next turn.
        add_bos: start with `<bos>`.
    """
    check_messages(messages)
    start, end = vocab.token_id(START_OF_TURN), vocab.token_id(END_OF_TURN)
    newline = vocab.encode_text("\n")
    ids: list[int] = [vocab.bos_id] if add_bos else []
    mask: list[bool] = [False] * len(ids)

    def put(tokens: list[int], target: bool) -> None:
        ids.extend(tokens)
        mask.extend([target] * len(tokens))

    for i, m in enumerate(messages):
        is_model = m["role"] == "model"
        put([start, *vocab.encode_text(m["role"] + "\n")], False)
        for item in _content(m, i):
            put(encode_item(item), is_model)
        put([end], is_model)  # the model learns to close its own turn: that is how generation stops
        put(newline, False)
    if add_generation_prompt:
        put([start, *vocab.encode_text("model\n")], False)
    return ChatEncoding(ids, mask)


def render_chat(messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    """The template as text (images shown as `<image>`), for logs and docs."""
    check_messages(messages)
    out = []
    for i, m in enumerate(messages):
        body = "".join(x if isinstance(x, str) else "<image>" for x in _content(m, i))
        out.append(f"{START_OF_TURN}{m['role']}\n{body}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append(f"{START_OF_TURN}model\n")
    return "".join(out)


def parse_chat(ids: Sequence[int], vocab: Vocabulary, decode: Callable[[list[int]], list[Any]]) -> list[dict]:
    """Turn ids of a rendered conversation back into messages.

    Turns are split at the `<start_of_turn>` / `<end_of_turn>` ids (so text that merely spells a marker stays text),
    then each turn's ids are decoded with `decode` (e.g. `Processor.decode`: strings and images).

    Returns:
        Messages with role and content (a string, or a list when the turn holds images). A final turn that was
        not closed (generation cut short) is returned as it is; ids outside turns (`<bos>`, newlines) are dropped.

    Raises:
        ValueError: a turn header that is not a known role followed by a newline.
    """
    start, end = vocab.token_id(START_OF_TURN), vocab.token_id(END_OF_TURN)
    turns: list[list[int]] = []
    current: list[int] | None = None
    for t in (int(i) for i in ids):
        if t == start:
            if current is not None:  # an unclosed turn followed by a new one
                turns.append(current)
            current = []
        elif t == end and current is not None:
            turns.append(current)
            current = None
        elif current is not None:
            current.append(t)
    if current is not None:
        turns.append(current)
    messages = []
    for turn in turns:
        items = [x for x in decode(turn) if not (isinstance(x, str) and not x)]
        head = items[0] if items and isinstance(items[0], str) else ""
        role, sep, rest = head.partition("\n")
        if not sep or role not in ROLES:
            raise ValueError(f"malformed chat turn header {role[:20]!r}; expected one of {ROLES} and a newline")
        content = ([rest] if rest else []) + items[1:]
        messages.append({"role": role, "content": content[0] if len(content) == 1 and isinstance(content[0], str)
                         else (content or "")})
    return messages
