"""A vision-language model's answer, made into a caption.

VLMs answer like chat assistants: some think aloud first (``<think>...</think>``), many open with boilerplate ("This
image shows", "The image depicts"), and a few fall into repetition loops ("jungle jungle jungle ...", seen in
JoyCaption at a 1.5 to 3% rate and in the A1111 extension's issue #70). :func:`clean_answer` removes the reasoning and
the opener, cuts a loop after its first occurrence, and collapses the rest to one line, so it can go into a prompt and
a caption file. Pure text: no model, no torch.
"""

from __future__ import annotations

import re

__all__ = ["clean_answer", "cut_loops", "strip_opener", "strip_reasoning"]

# Reasoning blocks: <think>, <thinking>, <reasoning>, <reflection> (DeepSeek-R1, Qwen3, QwQ and their fine-tunes). An
# unclosed block at the start (a reasoning model cut by max_tokens) leaves no answer at all.
_BLOCK = re.compile(r"<(think|thinking|reasoning|reflection)>.*?</\1>", re.IGNORECASE | re.DOTALL)
_UNCLOSED = re.compile(r"^\s*<(think|thinking|reasoning|reflection)>.*\Z", re.IGNORECASE | re.DOTALL)
_STRAY_CLOSE = re.compile(r"^.*?</(think|thinking|reasoning|reflection)>", re.IGNORECASE | re.DOTALL)

# Openers that say nothing about the picture, at the start of the answer only.
_OPENER = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)[,.!]?\s+)?(?:here\s+is|here's)\s+(?:a|an|the)\s+"
    r"(?:\w+\s+){0,3}(?:caption|description)(?:\s+(?:of|for)\s+(?:this|the)\s+(?:image|picture|photo\w*))?\s*[:.]\s*"
    r"|^\s*(?:this|the)\s+(?:image|picture|photo(?:graph)?|artwork|illustration)\s+"
    r"(?:shows|depicts|features|displays|presents|captures|is\s+of|contains)\s+",
    re.IGNORECASE,
)


def strip_reasoning(text: str) -> str:
    """``text`` without reasoning blocks; an answer that is only an unfinished block is empty."""
    text = _BLOCK.sub(" ", text)
    if _UNCLOSED.match(text):
        return ""
    return _STRAY_CLOSE.sub(" ", text)  # the opening tag was in the prompt (chat templates that prefill it)


def strip_opener(text: str) -> str:
    """``text`` without a boilerplate opener ("This image shows ...", "Here is a caption: ...");
    kept whole when the opener is all there is."""
    stripped = _OPENER.sub("", text, count=1)
    return stripped if stripped.strip() else text


def cut_loops(text: str, *, min_repeats: int = 3, max_unit: int = 12) -> str:
    """Cut a repetition loop: a run of words (1 to ``max_unit`` long) repeated ``min_repeats`` times or more in a row
    is kept once, and the answer ends after it (what follows a loop is more of it, or noise)."""
    words = text.split()
    n = len(words)
    folded = [w.lower().strip(",.;:!?") for w in words]
    for start in range(n):
        for unit in range(1, max_unit + 1):
            if start + unit * min_repeats > n:
                break
            pattern = folded[start:start + unit]
            repeats = 1
            while folded[start + repeats * unit:start + (repeats + 1) * unit] == pattern:
                repeats += 1
            if repeats >= min_repeats:
                return " ".join(words[:start + unit]).rstrip(",;: ")
    return text


def clean_answer(text: str) -> str:
    """A VLM answer as a one-line caption: reasoning removed, the opener removed, loops cut, whitespace collapsed, and
    no closing full stop (phrases follow it, after a comma). Empty when nothing is left."""
    text = strip_reasoning(text)
    text = " ".join(text.split())
    text = strip_opener(text)
    text = cut_loops(text)
    return " ".join(text.split()).rstrip(" .")
