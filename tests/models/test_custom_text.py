"""open_clip models whose text tower is not the classic CLIP one (``CustomTextCLIP``).

SigLIP-like towers (bidirectional, pooled at the last position) and towers from
transformers must give exactly open_clip's own features: its tokenizer's padded
ids through ``model.encode_text``. A causal, end-pooled ``TextTransformer`` inside
a ``CustomTextCLIP`` is the standard layout and keeps the fast paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from image2prompt.models.clip import load_clip
from tests.support import tiny_models

TEXTS = [
    "a photo of a dog", "x", "an oil painting, by Claude Monet, trending on artstation",
    "highly detailed!!! 8k, (masterpiece)", "ünïcödé text, café", "",
    ", ".join(["a very long prompt that goes on"] * 20),  # past the context: truncated
]
PREFIXES = ["a photo of a dog", "a photo!!!", "a café in paris", ", ".join(["golden hour"] * 24), ""]
PHRASES = ["highly detailed", "by Claude Monet", "8k", "(masterpiece)", "naïve art", "", "a b c d e f g h"]

KINDS = {
    # SigLIP's text tower: bidirectional, pooled at the last position (a padding token), biased projection.
    "siglip-like": {"no_causal_mask": True, "pool_type": "last", "proj_bias": True},
    # A causal tower pooled at the end token, but built as CustomTextCLIP's TextTransformer.
    "causal-argmax": {"pool_type": "argmax"},
    # Pooled at the first end token, whose id the tower knows.
    "causal-eos": {"pool_type": "eos", "eos_id": 49407},
    # Pooled at "eos" with open_clip's default id (2), which is not the CLIP end token.
    "causal-eos-other-id": {"pool_type": "eos"},
    # Causal, with a CLS embedding appended after the padding and pooled there (CoCa-style text).
    "cls-embed": {"embed_cls": True},
}
STANDARD = {"siglip-like": False, "causal-argmax": True, "causal-eos": True, "causal-eos-other-id": False,
            "cls-embed": False}


@pytest.fixture(scope="module", params=sorted(KINDS))
def custom(request, tmp_path_factory):
    path = tiny_models.make_custom_text_open_clip_dir(tmp_path_factory.mktemp(request.param), KINDS[request.param])
    enc = load_clip(f"local-dir:{path}", device="cpu", precision="fp32")
    return request.param, enc


def open_clip_features(enc, texts):
    import open_clip

    tok = open_clip.get_tokenizer(enc.spec.source)
    with torch.inference_mode():
        feats = enc.model.encode_text(tok(list(texts))).float()
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def test_loads_as_custom_text_clip(custom):
    _kind, enc = custom
    assert type(enc.model).__name__ == "CustomTextCLIP"
    assert enc.tower is enc.model.text
    assert enc.embed_dim == 32 and enc.text_width == 64 and enc.text_heads == 2
    # the GELU swap (models/activations.py) lands in the text tower only
    kinds = {name: type(m).__name__ for name, m in enc.model.named_modules() if "GELU" in type(m).__name__}
    assert {n for n, k in kinds.items() if k == "NativeGELU"} == {n for n in kinds if n.startswith("text.")} != set()
    assert all(k == "GELU" for n, k in kinds.items() if n.startswith("visual."))


def test_fast_paths_only_where_exact(custom):
    kind, enc = custom
    assert enc.standard_text is STANDARD[kind]
    assert enc.padding_free is STANDARD[kind]
    assert enc.native_text is not STANDARD[kind]
    assert (enc.prefix_scorer() is not None) is STANDARD[kind]


def test_texts_encode_as_open_clip_encodes_them(custom):
    _kind, enc = custom
    ours = enc.encode_texts(TEXTS)
    assert ours.shape == (len(TEXTS), 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, open_clip_features(enc, TEXTS), atol=1e-5)
    # Batch size does not change anything (SigLIP-like towers see every padding position).
    enc.memory_budget, saved = 300_000, enc.memory_budget
    try:
        assert enc.rows_for(enc.context_length) < len(TEXTS)
        np.testing.assert_allclose(enc.encode_texts(TEXTS), ours, atol=1e-5)
    finally:
        enc.memory_budget = saved


def test_embed_labels_matches_and_returns_token_ids(custom):
    _kind, enc = custom
    feats, ids = enc.embed_labels(TEXTS[:4])
    np.testing.assert_allclose(feats, open_clip_features(enc, TEXTS[:4]), atol=1e-5)
    assert ids == [enc.tokenizer.encode(t) for t in TEXTS[:4]]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_extensions_equal_full_encodes(custom, prefix):
    _kind, enc = custom
    got = enc.encode_extensions(prefix, PHRASES)
    np.testing.assert_allclose(got, open_clip_features(enc, [prefix + ", " + p for p in PHRASES]), atol=1e-5)


def test_extensions_many_and_phrase_ids(custom):
    _kind, enc = custom
    requests = [(p, PHRASES) for p in PREFIXES[:3]]
    ids = {p: enc.tokenizer.encode(p) for p in PHRASES}
    outs = enc.encode_extensions_many(requests, phrase_ids=ids)
    assert len(outs) == len(requests)
    for (prefix, phrases), got in zip(requests, outs):
        np.testing.assert_allclose(got, open_clip_features(enc, [prefix + ", " + p for p in phrases]), atol=1e-5)


def test_a_transformers_text_tower_encodes_as_open_clip(tmp_path: Path, tiny_hf_clip: Path):
    """A tower from transformers (as in the XLM-RoBERTa CLIPs): mean-pooled over the
    tokenizer's attention mask, so padding must be exactly open_clip's."""
    text_config = tiny_models.make_bert_text_config_dir(tmp_path / "bert", pad_token_id=49407)
    path = tiny_models.make_custom_text_open_clip_dir(tmp_path / "hf-text", {
        "hf_model_name": str(text_config), "hf_tokenizer_name": str(tiny_hf_clip),
        "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler",
    })
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        if (tiny_hf_clip / name).is_file():
            shutil.copy(tiny_hf_clip / name, path / name)  # local-dir: reads the tokenizer from the folder
    enc = load_clip(f"local-dir:{path}", device="cpu", precision="fp32")
    assert type(enc.tower).__name__ == "HFTextEncoder"
    assert enc.native_text and not enc.padding_free and enc.prefix_scorer() is None
    assert enc.embed_dim == 32 and enc.text_width == 64 and enc.text_heads == 2
    np.testing.assert_allclose(enc.encode_texts(TEXTS), open_clip_features(enc, TEXTS), atol=1e-5)
    got = enc.encode_extensions("a photo of a dog", PHRASES)
    np.testing.assert_allclose(got, open_clip_features(enc, ["a photo of a dog, " + p for p in PHRASES]), atol=1e-5)
