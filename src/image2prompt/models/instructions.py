"""What a vision-language model is asked for: caption types, lengths, extra instructions.

The caption types are those that JoyCaption's and taggui's users pick from (descriptive,
casual, straightforward, a Stable Diffusion prompt, Booru-like tags, an art critic's
reading), worded here for a prompt scaffold: each asks for the picture, not for the
mood of a chat; the default, ``sentence``, asks for one sentence that can start a prompt
within CLIP's 77 tokens. :func:`build_instruction` puts one together with a length (``short``,
``medium``, ``long``, or a number of words), extra sentences, a custom text (``{name}``,
``{length}`` and ``{words}`` filled in) and a name to call the person in the picture (a
LoRA trigger word). The instruction is part of the captioner's identity
(:func:`caption_identity`), so changing it redoes a resumed batch's images. Torch-free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..errors import SettingsError

__all__ = ["CAPTION_LENGTHS", "CAPTION_TYPES", "DEFAULT_CAPTION_TYPE", "DEFAULT_INSTRUCTION", "FLORENCE2_TASK",
           "FLORENCE_TASKS", "INSTRUCTED_KINDS", "build_instruction", "caption_identity", "default_instruction"]

#: Caption type -> the instruction; ``{length}`` becomes "a short ", "a 40-word " and so on.
CAPTION_TYPES: dict[str, str] = {
    "sentence": ("Describe this image in one detailed sentence, as the start of a text-to-image prompt: the "
                 "subject, what it is doing, the setting, and the style, colours and lighting. Answer with the "
                 "sentence only."),
    "descriptive": "Write {length}detailed description of this image.",
    "casual": "Write {length}descriptive caption for this image in a casual tone.",
    "straightforward": ("Write {length}straightforward caption for this image. Start with the main subject and the "
                        "medium, then the people, objects and scenery that matter, in definite words: colours, "
                        "shapes, textures and where things are. Leave out mood, guesses and anything not visible, "
                        "and do not begin with \"This image\"."),
    "sd-prompt": ("Write {length}Stable Diffusion prompt for this image: comma-separated phrases for the subject, "
                  "the setting, the medium and the style, with no sentences around them."),
    "booru": "Write {length}list of Booru-style tags for this image, comma-separated, with no other text.",
    "art-critic": ("Write {length}reading of this image as an art critic would: its composition, style, "
                   "symbolism, use of colour and light, and the movement it may belong to."),
}
DEFAULT_CAPTION_TYPE = "sentence"  # one sentence: the start of a prompt that fits 77 tokens
#: short, medium, long; or a number of words.
CAPTION_LENGTHS = ("short", "medium", "long")
#: What a VLM is asked when nothing else is said.
DEFAULT_INSTRUCTION = CAPTION_TYPES[DEFAULT_CAPTION_TYPE].format(length="a ")
#: Florence-2 takes task tokens, not instructions; the default is its most detailed caption.
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
FLORENCE2_TASK = "<MORE_DETAILED_CAPTION>"
#: The captioner kinds that take an instruction (and answer as chat models do).
INSTRUCTED_KINDS = ("vlm", "florence2", "remote")
_NAME = "If there is a person or character in the image, call them {name}."


def build_instruction(caption_type: str = DEFAULT_CAPTION_TYPE, *, length: str | int | None = None,
                      extra: Sequence[str] = (), template: str | None = None, name: str | None = None) -> str:
    """The instruction for one caption type (or a custom ``template``), length, extra sentences
    and name. Raises :class:`~image2prompt.errors.SettingsError` naming what is wrong."""
    words = _words(length)
    article = "a " if length is None else f"a {words}-word " if words else f"a {length} "
    if template is not None:
        text = template.strip()
        if not text:
            raise SettingsError("the caption prompt is empty")
        try:
            text = text.format(name=name or "the subject", length=length or "", words=words or "")
        except (KeyError, IndexError, ValueError) as err:
            raise SettingsError(f"the caption prompt has a placeholder that is not {{name}}, {{length}} or "
                                f"{{words}}: {err}") from None
    else:
        if caption_type not in CAPTION_TYPES:
            raise SettingsError(f"unknown caption type {caption_type!r}; choose one of: {', '.join(CAPTION_TYPES)}")
        if length is not None and "{length}" not in CAPTION_TYPES[caption_type]:
            raise SettingsError(f"the {caption_type} caption type is one sentence: it takes no length")
        text = CAPTION_TYPES[caption_type].format(length=article)
        if name:
            text += " " + _NAME.format(name=name)
    sentences = [s.strip() for s in extra if s and s.strip()]
    return " ".join([text, *sentences])


def default_instruction(kind: str) -> str | None:
    """What a captioner of this kind is asked when nothing else is said (None: it takes nothing)."""
    if kind == "florence2":
        return FLORENCE2_TASK
    return DEFAULT_INSTRUCTION if kind in INSTRUCTED_KINDS else None


def caption_identity(name: str, instruction: str | None) -> str:
    """A captioner's name in the fingerprint: with a hash of its instruction when it takes one,
    so another instruction is another caption (a captioner without one keeps its bare name)."""
    if instruction is None:
        return name
    return f"{name}#{hashlib.sha256(instruction.encode('utf-8')).hexdigest()[:12]}"


def _words(length: str | int | None) -> int | None:
    if length is None or isinstance(length, int):
        if isinstance(length, int) and length < 1:
            raise SettingsError(f"a caption length in words must be at least 1, got {length}")
        return length
    if length.strip().isdigit():
        return _words(int(length))
    if length not in CAPTION_LENGTHS:
        raise SettingsError(f"unknown caption length {length!r}; use {', '.join(CAPTION_LENGTHS)} or a number of words")
    return None
