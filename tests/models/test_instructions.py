"""What a VLM is asked for: caption types, lengths, extra sentences, a custom prompt, a name."""

from __future__ import annotations

import pytest

from image2prompt.errors import SettingsError
from image2prompt.models.instructions import (
    CAPTION_TYPES,
    DEFAULT_INSTRUCTION,
    build_instruction,
    caption_identity,
)


def test_types_and_lengths() -> None:
    assert build_instruction() == DEFAULT_INSTRUCTION and DEFAULT_INSTRUCTION.startswith("Describe this image in one")
    assert build_instruction("descriptive") == "Write a detailed description of this image."
    assert build_instruction("casual", length="short") == "Write a short descriptive caption for this image in a casual tone."
    assert build_instruction("booru", length=40).startswith("Write a 40-word list of Booru-style tags")
    assert build_instruction("booru", length="40") == build_instruction("booru", length=40)
    assert all(build_instruction(t) for t in CAPTION_TYPES)


def test_extra_sentences_a_name_and_a_custom_template() -> None:
    text = build_instruction("descriptive", extra=["Mention the lighting.", "  "], name="sks woman")
    assert text == ("Write a detailed description of this image. If there is a person or character in the image, "
                    "call them sks woman. Mention the lighting.")
    assert build_instruction(template="Describe {name} in {words} words.", name="ohwx", length=20) == \
        "Describe ohwx in 20 words."


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"caption_type": "poem"}, "unknown caption type 'poem'; choose one of: sentence, descriptive, casual"),
    ({"caption_type": "descriptive", "length": "huge"}, "unknown caption length 'huge'"),
    ({"caption_type": "descriptive", "length": 0}, "at least 1"),
    ({"length": "short"}, "the sentence caption type is one sentence: it takes no length"),
    ({"template": "   "}, "the caption prompt is empty"),
    ({"template": "Describe {subject}."}, "placeholder that is not {name}"),
])
def test_bad_requests_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        build_instruction(**kwargs)


def test_the_identity_changes_with_the_instruction_only() -> None:
    assert caption_identity("blip-large", None) == "blip-large"  # captioners without one: as before
    a, b = caption_identity("openai:m", "Write a caption."), caption_identity("openai:m", "Write tags.")
    assert a != b and a.startswith("openai:m#") and caption_identity("openai:m", "Write a caption.") == a


def test_vlm_presets_are_named_and_take_an_instruction() -> None:
    from image2prompt.identity import ModelIdentity
    from image2prompt.interrogator import Config
    from image2prompt.models import parse_caption_name

    spec = parse_caption_name("qwen2.5-vl-7b")
    assert (spec.kind, spec.source) == ("vlm", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert parse_caption_name("florence-2-large").kind == "florence2"
    assert parse_caption_name("blip-large").kind == "blip"  # the reference's table is untouched
    told = ModelIdentity.of_config(Config(clip_model="ViT-B-32/openai", caption_model="joycaption-beta-one"))
    assert told is not None and told.captioner == caption_identity("joycaption-beta-one", DEFAULT_INSTRUCTION)
    blip = ModelIdentity.of_config(Config(clip_model="ViT-B-32/openai", caption_model="blip-large",
                                          caption_prompt="ignored by BLIP"))
    assert blip is not None and blip.captioner == "blip-large"  # BLIP takes no instruction: its name as before
