from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from image2prompt.errors import ModelLoadError
from image2prompt.models import parse_caption_name
from image2prompt.models.captioners import load_captioner


def test_tiny_blip_captions_in_batches_like_one_by_one(tiny_blip: Path, images):
    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    batch = cap.caption(images[:3], batch_size=3)
    single = [cap.caption([im])[0] for im in images[:3]]
    assert batch == single
    assert all(isinstance(c, str) and c for c in batch)
    assert all("arafed" not in c for c in batch)


def test_names():
    assert parse_caption_name("blip-large").source == "Salesforce/blip-image-captioning-large"
    assert parse_caption_name("blip2-2.7b").kind == "blip2"
    assert parse_caption_name("git-large-coco").kind == "git"
    with pytest.raises(ModelLoadError, match="blip-base, blip-large"):
        parse_caption_name("blip-huge")


def test_folder_without_weights_is_an_error(tmp_path: Path, tiny_blip: Path):
    d = tmp_path / "blip"
    shutil.copytree(tiny_blip, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not load caption model"):
        load_captioner(f"local-dir:{d}", device="cpu")


def test_hub_captioner_offline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_captioner("blip-base", device="cpu")


def test_captions_are_the_raw_decoded_text(tiny_blip: Path, images, monkeypatch: pytest.MonkeyPatch):
    """Cleaning captions is the caller's job: the captioner returns what the model decoded."""
    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    raw = ["arafed dog sitting on a table ", "there is a cat  in the street"]
    monkeypatch.setattr(cap.processor, "batch_decode", lambda tokens, skip_special_tokens: raw[: len(tokens)])
    assert cap.caption(images[:2], batch_size=2) == raw


def test_captioners_follow_the_plugin_protocol(tiny_blip: Path):
    from image2prompt.models import CaptionerLike

    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    assert isinstance(cap, CaptionerLike) and callable(cap.offload) and callable(cap.activate)


def test_blip_vision_attention_runs_fused_and_matches_eager(tiny_blip: Path, images):
    """The fused vision attention is the same attention: held to transformers' eager BLIP."""
    import torch
    from transformers import BlipForConditionalGeneration

    from transformers.models.blip.modeling_blip import BlipAttention

    from image2prompt.models.captioners import FusedBlipAttention, fuse_blip_vision_attention

    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    eager = BlipForConditionalGeneration.from_pretrained(tiny_blip).eval()
    layers = eager.config.vision_config.num_hidden_layers
    # the loaded captioner's vision attention is fused, all of it, and fusing again changes nothing
    kinds = [type(m) for m in cap.model.modules() if isinstance(m, BlipAttention)]
    assert kinds == [FusedBlipAttention] * layers
    assert fuse_blip_vision_attention(cap.model) == 0
    assert not any(type(m) is FusedBlipAttention for m in eager.modules())

    # BLIP's vision init (std 1e-10) makes every token alike and attention uniform, where any
    # attention looks right: give both towers the same random weights.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pe, pc in zip(eager.vision_model.parameters(), cap.model.vision_model.parameters()):
            if pe.dim() >= 2:
                w = torch.randn(pe.shape, generator=gen) * 0.2
                pe.copy_(w)
                pc.copy_(w)
    pixels = cap.processor(images=images[:2], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        probs = eager.vision_model(pixel_values=pixels, output_attentions=True).attentions[0]
        assert probs.max().item() > 10.0 / probs.shape[-1]  # far from uniform
        want = eager.vision_model(pixel_values=pixels).last_hidden_state
        got = cap.model.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        tokens = dict(max_new_tokens=12, do_sample=False, num_beams=1)
        assert torch.equal(cap.model.generate(pixel_values=pixels, **tokens),
                           eager.generate(pixel_values=pixels, **tokens))


def test_a_fused_blip_pickles_and_gives_eager_attentions_when_asked(tiny_blip: Path, images):
    import pickle

    import torch

    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    copy = pickle.loads(pickle.dumps(cap.model.vision_model))
    pixels = cap.processor(images=images[:1], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        torch.testing.assert_close(copy(pixel_values=pixels).last_hidden_state,
                                   cap.model.vision_model(pixel_values=pixels).last_hidden_state)
        # the fused forward's own fallback: asked for the weights, it runs the eager attention
        attn = cap.model.vision_model.encoder.layers[0].self_attn
        hidden = torch.randn(1, 5, attn.embed_dim)
        out, weights = attn(hidden, output_attentions=True)
        assert weights is not None and weights.shape == (1, attn.num_heads, 5, 5)
        torch.testing.assert_close(out, attn(hidden)[0])
