"""In-process vision-language-model captioners (models/vlm.py), on tiny random-weight models.

Random weights give random text: these tests hold types, counts and equalities, never quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from image2prompt import Config, Interrogator
from image2prompt.errors import ModelLoadError
from image2prompt.models import CaptionerLike, parse_caption_name
from image2prompt.models.captioners import Captioner, load_captioner
from image2prompt.models.instructions import DEFAULT_INSTRUCTION, FLORENCE2_TASK
from image2prompt.models.vlm import Florence2Captioner, VLMCaptioner

VLMS = ["tiny_llava", "tiny_qwen2_vl", "tiny_gemma3", "tiny_florence2"]


def _sized_images() -> list[Image.Image]:
    """Three different images of three different sizes (and one not RGB)."""
    return [Image.new("RGB", (40, 30), (200, 30, 30)),
            Image.linear_gradient("L").resize((64, 48)).convert("RGB"),
            Image.new("RGBA", (23, 57), (10, 120, 240, 255))]


@pytest.fixture(scope="module", params=VLMS)
def vlm(request) -> tuple[str, Path, VLMCaptioner]:
    folder = request.getfixturevalue(request.param)
    cap = load_captioner(f"local-dir:{folder}", device="cpu", max_new_tokens=8)
    assert isinstance(cap, VLMCaptioner)
    return request.param, folder, cap


def test_a_vlm_folder_is_detected_from_its_config(vlm):
    which, folder, cap = vlm
    spec = parse_caption_name(f"local-dir:{folder}")
    assert spec.kind == ("florence2" if which == "tiny_florence2" else "vlm")
    assert spec.local_path == folder.resolve()
    assert isinstance(cap, Florence2Captioner) == (which == "tiny_florence2")


def test_a_vlm_captions_a_batch_like_one_at_a_time(vlm):
    _, _, cap = vlm
    images = _sized_images()
    batch = cap.caption(images, batch_size=3)
    assert len(batch) == 3 and all(isinstance(c, str) for c in batch)
    assert any(batch), batch  # the special ids are suppressed: random ids decode to visible text
    assert [cap.caption([im], batch_size=1)[0] for im in images] == batch  # left padding changes nothing
    assert cap.caption(images, batch_size=2) == batch
    assert cap.caption([]) == []


def test_a_vlm_follows_the_captioner_protocol(vlm):
    which, _, cap = vlm
    assert isinstance(cap, CaptionerLike) and callable(cap.offload) and callable(cap.activate)
    assert cap.name.startswith("local-dir:")
    assert cap.processor.tokenizer.padding_side == "left"
    # sizes: 32 px for the fixed-size towers; Qwen2-VL sizes by pixel count, so it does not say
    assert cap.input_side == (None if which == "tiny_qwen2_vl" else 32)
    cap.offload()  # on a CPU both are no-ops that keep it usable
    cap.activate()
    assert len(cap.caption(_sized_images()[:1])) == 1


def test_the_prompt_is_the_chat_template_with_the_instruction(tiny_llava: Path, tiny_florence2: Path):
    llava = load_captioner(f"local-dir:{tiny_llava}", device="cpu", max_new_tokens=4)
    assert isinstance(llava, VLMCaptioner) and llava.instruction == DEFAULT_INSTRUCTION
    prompt = llava.prompt()
    assert prompt.startswith("<|im_start|>user\n<image>") and DEFAULT_INSTRUCTION in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    florence = load_captioner(f"local-dir:{tiny_florence2}", device="cpu", max_new_tokens=4)
    assert isinstance(florence, Florence2Captioner) and florence.prompt() == FLORENCE2_TASK

    other = VLMCaptioner(llava.spec, llava.model, llava.processor, llava.device, llava.dtype, 4,
                         instruction="Describe the colours.")
    assert "Describe the colours." in other.prompt() and DEFAULT_INSTRUCTION not in other.prompt()
    assert len(other.caption(_sized_images())) == 3


def test_max_new_tokens_bounds_the_caption(tiny_llava: Path):
    cap = load_captioner(f"local-dir:{tiny_llava}", device="cpu", max_new_tokens=2)
    assert isinstance(cap, VLMCaptioner) and cap.max_new_tokens == 2
    [text] = cap.caption(_sized_images()[:1])
    assert len(cap.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 4


def test_a_blip_folder_still_loads_as_blip(tiny_blip: Path):
    assert parse_caption_name(f"local-dir:{tiny_blip}").kind == "blip"
    assert type(load_captioner(f"local-dir:{tiny_blip}", device="cpu")) is Captioner


def test_detection_reads_the_config_not_the_name(tmp_path: Path, tiny_llava: Path, tiny_blip: Path):
    # a Llava saved under a BLIP-sounding name is a VLM, and a BLIP under a Llava-sounding one is BLIP
    shutil.copytree(tiny_llava, tmp_path / "blip-large")
    shutil.copytree(tiny_blip, tmp_path / "llava-joycaption")
    assert parse_caption_name(f"local-dir:{tmp_path / 'blip-large'}").kind == "vlm"
    assert parse_caption_name(f"local-dir:{tmp_path / 'llava-joycaption'}").kind == "blip"


def test_an_image_text_to_text_architecture_is_a_vlm(tmp_path: Path):
    """A model type outside the static table that transformers maps to image-text-to-text."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next_video",
                                                       "architectures": ["LlavaNextVideoForConditionalGeneration"]}))
    assert parse_caption_name(f"local-dir:{tmp_path}").kind == "vlm"


def test_an_unknown_model_type_is_one_line(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ModelLoadError, match="captioner model type 'bert' is not supported") as info:
        parse_caption_name(f"local-dir:{tmp_path}")
    assert "\n" not in str(info.value)


def test_hf_names_guess_the_kind_until_the_config_is_known():
    assert parse_caption_name("hf:fancyfeast/llama-joycaption-beta-one-hf-llava").kind == "vlm"
    assert parse_caption_name("hf:florence-community/Florence-2-base").kind == "florence2"
    assert parse_caption_name("hf:Salesforce/blip-image-captioning-base").kind == "blip"


def test_a_vlm_folder_without_weights_is_an_error(tmp_path: Path, tiny_llava: Path):
    d = tmp_path / "llava"
    shutil.copytree(tiny_llava, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not load caption model"):
        load_captioner(f"local-dir:{d}", device="cpu")


def test_interrogator_runs_fast_with_a_vlm_captioner(tiny_open_clip: Path, tiny_llava: Path, small_vocab_dir: Path,
                                                     tmp_path: Path):
    ci = Interrogator.load(Config(
        clip_model=f"local-dir:{tiny_open_clip}", caption_model=f"local-dir:{tiny_llava}", device="cpu",
        cache_dir=str(tmp_path / "cache"), vocab=(str(small_vocab_dir),), caption_max_tokens=8,
    ))
    assert isinstance(ci.captioner, VLMCaptioner)
    images = _sized_images()
    results = list(ci.interrogate_batch(images, "fast"))
    assert len(results) == 3
    assert all(r.mode == "fast" and r.prompt for r in results)
    r = ci.interrogate(images[0], "fast")
    assert r.prompt == results[0].prompt


def test_the_instruction_is_part_of_the_fingerprint(tiny_open_clip: Path, tiny_llava: Path, small_vocab_dir: Path,
                                                    tmp_path: Path):
    """Told from the Config (before loading) and from the loaded captioner alike; another caption prompt
    is another fingerprint, so a resumed batch redoes its images."""
    from image2prompt.identity import ModelIdentity
    from image2prompt.settings import SearchSettings

    config = Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=f"local-dir:{tiny_llava}", device="cpu",
                    cache_dir=str(tmp_path / "cache"), vocab=(str(small_vocab_dir),), caption_max_tokens=4)
    told = ModelIdentity.of_config(config)
    loaded = Interrogator.load(config)
    assert told is not None and told == loaded.identity and told.captioner.startswith(f"local-dir:{tiny_llava}#")
    other = Config(**{**config.__dict__, "caption_prompt": "List the colours."})
    other_told = ModelIdentity.of_config(other)
    assert other_told is not None and other_told.fingerprint(SearchSettings()) != told.fingerprint(SearchSettings())
    other_loaded = Interrogator.load(other)
    assert other_loaded.captioner.instruction == "List the colours." and other_loaded.identity == other_told
