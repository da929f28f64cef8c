from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from image2prompt.errors import ModelLoadError
from image2prompt.models import parse_clip_name, resolve_target
from image2prompt.models.clip import load_clip
from image2prompt.models.device import resolve_device, resolve_dtype

TEXTS = [
    "a photo of a dog", "x", "an oil painting, by Claude Monet, trending on artstation",
    "highly detailed!!! 8k, (masterpiece)", "ünïcödé text, café",
    ", ".join(["a very long prompt that goes on"] * 20),  # far past 77 tokens: truncated
]


@pytest.fixture(scope="module")
def oc(tiny_open_clip: Path):
    return load_clip(f"local-dir:{tiny_open_clip}", device="cpu")


@pytest.fixture(scope="module")
def hf(tiny_hf_clip: Path):
    return load_clip(str(tiny_hf_clip), device="cpu")


def test_open_clip_padding_free_equals_full_context(oc):
    import open_clip

    assert oc.backend == "open_clip" and oc.padding_free
    ours = oc.encode_texts(TEXTS)
    tok = open_clip.get_tokenizer(oc.spec.source)
    with torch.inference_mode():
        full = oc.model.encode_text(tok(TEXTS)).float()
    full = torch.nn.functional.normalize(full, dim=-1).numpy()
    assert np.abs(ours - full).max() <= 1e-5
    assert oc.count_tokens(TEXTS[-1]) > 77
    assert oc.token_ids([TEXTS[-1]])[0] == tok([TEXTS[-1]])[0].tolist()


def test_batches_respect_the_memory_budget_and_keep_order(oc):
    ref = oc.encode_texts(TEXTS)
    oc.memory_budget, saved = 200_000, oc.memory_budget
    try:
        assert oc.rows_for(77) == 1 and oc.rows_for(3) > 1
        small = oc.encode_texts(TEXTS)
    finally:
        oc.memory_budget = saved
    assert np.abs(small - ref).max() <= 1e-5


def test_transformers_padding_free_equals_full_padding(hf):
    assert hf.backend == "transformers"
    ours = hf.encode_texts(TEXTS)
    inputs = hf.processor.tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = hf.model.get_text_features(**inputs)
    full = out.pooler_output if hasattr(out, "pooler_output") else out
    full = torch.nn.functional.normalize(full.float(), dim=-1).numpy()
    assert np.abs(ours - full).max() <= 1e-5


def test_transformers_tokens_match_open_clip(oc, hf):
    from open_clip.tokenizer import basic_clean, whitespace_clean

    for text in TEXTS:
        cleaned = whitespace_clean(basic_clean(text))
        assert hf.tokenizer.encode(cleaned.lower()) == oc.tokenizer.encode(text)


def test_image_features_are_normalised(oc, hf, images):
    for enc in (oc, hf):
        f = enc.encode_images(images[:3], batch_size=2)
        assert f.shape == (3, enc.embed_dim) and f.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(enc.encode_images(images[:1]), f[:1], atol=1e-5)


@pytest.mark.parametrize("name,message", [
    ("ViT-L-14/nonsense", "known tags for ViT-L-14: .*openai"),
    ("ViT-L-14", "needs a pretrained tag"),
    ("local-dir:", "needs a folder"),
    ("hf:noslash", "expected hf:ORG/REPO"),
])
def test_bad_names_say_what_to_do(name, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_clip_name(name)


def test_missing_weights_never_fall_back_to_random(tmp_path: Path, tiny_open_clip: Path, tiny_hf_clip: Path):
    oc_copy = tmp_path / "oc"
    shutil.copytree(tiny_open_clip, oc_copy)
    (oc_copy / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_clip(f"local-dir:{oc_copy}", device="cpu")
    hf_copy = tmp_path / "hf"
    shutil.copytree(tiny_hf_clip, hf_copy)
    (hf_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not load CLIP model"):
        load_clip(str(hf_copy), device="cpu")


def test_partial_checkpoint_is_an_error(tmp_path: Path, tiny_hf_clip: Path):
    from safetensors.torch import load_file, save_file

    hf_copy = tmp_path / "hf"
    shutil.copytree(tiny_hf_clip, hf_copy)
    state = load_file(str(hf_copy / "model.safetensors"))
    state = {k: v for k, v in state.items() if "text_projection" not in k}
    save_file(state, str(hf_copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks .* weights"):
        load_clip(str(hf_copy), device="cpu")


def test_hub_models_offline_fail_with_advice(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_clip("ViT-B-32/openai", device="cpu")
    with pytest.raises(ModelLoadError, match="local-dir:PATH"):
        load_clip("hf:openai/clip-vit-base-patch32", device="cpu")


def test_targets_and_devices():
    assert resolve_target("sd15") == "ViT-L-14/openai"
    assert resolve_target("SDXL") == "ViT-bigG-14/laion2b_s39b_b160k"
    assert resolve_target("sd2") == "ViT-H-14/laion2b_s32b_b79k"
    with pytest.raises(ModelLoadError):
        resolve_target("sd3")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(torch.device("cuda:1")) == torch.float16
    assert resolve_dtype(torch.device("cuda")) == torch.float16
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("mps")) == torch.float32
    assert resolve_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype(torch.device("cpu"), "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda:1")


def test_bf16_on_cpu_is_close_to_fp32(tiny_open_clip: Path, oc):
    bf = load_clip(f"local-dir:{tiny_open_clip}", device="cpu", precision="bf16")
    assert bf.dtype == torch.bfloat16
    a, b = oc.encode_texts(TEXTS[:3]), bf.encode_texts(TEXTS[:3])
    assert np.abs(a - b).max() < 0.05


def test_open_clip_with_a_transformers_tokenizer_matches_open_clip(tmp_path: Path, tiny_hf_clip: Path):
    """An open_clip model whose config names a transformers tokenizer (not the CLIP BPE one)
    takes the generic path: full-context encodes of the tokenizer's ids, the same features
    as open_clip's own tokenize-and-encode, extra whitespace and truncation included."""
    import copy

    import open_clip

    from tests.support import tiny_models

    cfg = copy.deepcopy(tiny_models.TINY_OPEN_CLIP)
    cfg["text_cfg"]["hf_tokenizer_name"] = str(tiny_hf_clip)
    model_dir = tiny_models.make_open_clip_dir(tmp_path / "hf-tokenizer", cfg)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(tiny_hf_clip / name, model_dir / name)  # local-dir: reads the tokenizer from the folder
    enc = load_clip(f"local-dir:{model_dir}", device="cpu", precision="fp32")
    assert enc.backend == "open_clip" and not enc.padding_free
    texts = [*TEXTS, "an  oil painting,\tby   someone ", "  leading and trailing  "]
    tok = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    assert isinstance(tok, open_clip.tokenizer.HFTokenizer)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(enc.model.encode_text(tok(texts)).float(), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(texts), full, atol=1e-5)
    # Token counts (the 77-token budget check) agree with the tokenizer's own ids.
    ids = tok(texts)
    for text, row in zip(texts, ids.tolist()):
        n = row.index(enc.tokenizer.eot_id) + 1
        assert len(enc.token_ids([text])[0]) == n, text


def test_quick_gelu_trained_tags_are_built_with_quick_gelu():
    import open_clip

    from image2prompt.models.clip import tag_needs_quick_gelu

    assert tag_needs_quick_gelu(open_clip, "ViT-L-14", "openai")  # SD 1.x's text encoder
    assert tag_needs_quick_gelu(open_clip, "ViT-B-32", "openai")
    assert not tag_needs_quick_gelu(open_clip, "ViT-H-14", "laion2b_s32b_b79k")  # SD 2.x: GELU
    assert not tag_needs_quick_gelu(open_clip, "ViT-bigG-14", "laion2b_s39b_b160k")  # SDXL: GELU
    quick_archs = [(a, t) for a, t in open_clip.list_pretrained() if a.endswith("-quickgelu")]
    assert quick_archs and not any(tag_needs_quick_gelu(open_clip, a, t) for a, t in quick_archs)
    assert not tag_needs_quick_gelu(open_clip, "ViT-L-14", None)


@pytest.mark.parametrize("name, forced", [("ViT-L-14/openai", True), ("ViT-H-14/laion2b_s32b_b79k", False)])
def test_the_loader_asks_open_clip_for_quick_gelu(name: str, forced: bool, tiny_open_clip: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    """Named weights cannot be fetched here: open_clip is asked for them, and the tiny model
    stands in for what it would return."""
    import open_clip

    real = open_clip.create_model_and_transforms
    asked: list[dict] = []

    def stand_in(model_name, pretrained=None, **kwargs):
        asked.append({"model": model_name, "pretrained": pretrained, **kwargs})
        kwargs.pop("force_quick_gelu", None)
        return real(f"local-dir:{tiny_open_clip}", **kwargs)

    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_open_clip}")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", stand_in)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda _name: tokenizer)
    enc = load_clip(name, device="cpu")
    arch, tag = name.split("/")
    assert asked and asked[0]["model"] == arch and asked[0]["pretrained"] == tag
    assert asked[0].get("force_quick_gelu", False) is forced
    assert enc.quick_gelu_forced is forced
