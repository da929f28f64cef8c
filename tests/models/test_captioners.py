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


def _same_random_weights(a, b, seed: int, scale: float) -> None:
    """Copy one set of random weights (and biases) into two modules of the same shape."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            if "LayerNorm" in name or "layernorm" in name:
                continue
            w = torch.randn(pa.shape, generator=gen) * scale
            pa.copy_(w)
            pb.copy_(w)


def test_blip_cross_attention_is_absorbed_and_matches_eager(tiny_blip: Path, images):
    """The absorbed cross-attention is the same attention: held to transformers' eager BLIP."""
    import torch
    from transformers import BlipForConditionalGeneration
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    from image2prompt.models.captioners import AbsorbedBlipCrossAttention, absorb_blip_cross_attention

    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    eager = BlipForConditionalGeneration.from_pretrained(tiny_blip).eval()
    layers = eager.config.text_config.num_hidden_layers
    kinds = {name: type(m) for name, m in cap.model.named_modules() if isinstance(m, BlipTextSelfAttention)}
    assert sorted(kinds.values(), key=str) == sorted([AbsorbedBlipCrossAttention] * layers
                                                     + [BlipTextSelfAttention] * layers, key=str)
    assert all((t is AbsorbedBlipCrossAttention) == name.endswith("crossattention.self") for name, t in kinds.items())
    assert absorb_blip_cross_attention(cap.model) == 0
    assert not any(type(m) is AbsorbedBlipCrossAttention for m in eager.modules())

    # random weights, biases included (the key's bias is the term the softmax cancels), sharp
    # enough that attention is far from uniform and the tokens differ from image to image
    _same_random_weights(eager.vision_model, cap.model.vision_model, 0, 0.2)
    _same_random_weights(eager.text_decoder, cap.model.text_decoder, 1, 0.5)
    ours = cap.model.text_decoder.bert.encoder.layer[0].crossattention.self
    theirs = eager.text_decoder.bert.encoder.layer[0].crossattention.self
    assert ours.key.bias.abs().max() > 0.1
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 4, ours.query.in_features, generator=gen)
    states = torch.randn(3, 7, ours.key.in_features, generator=gen)
    mask = torch.zeros(3, 1, 1, 7)
    mask[1, ..., 5:] = torch.finfo(torch.float32).min  # the second item's last two tokens are padding
    with torch.inference_mode():
        got, got_p = ours(hidden, encoder_hidden_states=states, encoder_attention_mask=mask)
        want, want_p = theirs(hidden, encoder_hidden_states=states, encoder_attention_mask=mask)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_p, want_p, rtol=1e-4, atol=1e-5)
        assert want_p.max() > 0.9 and want_p[1, ..., 5:].max() == 0

        pixels = cap.processor(images=images[:3], return_tensors="pt")["pixel_values"]
        for beams in (1, 3):
            how = dict(max_new_tokens=12, do_sample=False, num_beams=beams, output_scores=True,
                       return_dict_in_generate=True)
            a, b = cap.model.generate(pixel_values=pixels, **how), eager.generate(pixel_values=pixels, **how)
            assert torch.equal(a.sequences, b.sequences)
            torch.testing.assert_close(torch.stack(a.scores), torch.stack(b.scores), rtol=1e-4, atol=1e-4)
        assert len({tuple(t) for t in b.sequences.tolist()}) > 1  # the images got different tokens


def test_absorbed_cross_attention_pickles_and_steps_aside_off_a_cpu_and_in_training(tiny_blip: Path):
    import pickle

    import torch

    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    copy = pickle.loads(pickle.dumps(cap.model.text_decoder))
    attn = cap.model.text_decoder.bert.encoder.layer[0].crossattention.self
    assert type(copy.bert.encoder.layer[0].crossattention.self) is type(attn)
    hidden = torch.randn(2, 3, attn.query.in_features)
    states = torch.randn(2, 5, attn.key.in_features)
    calls = []
    real = type(attn).__mro__[1].forward
    original = type(attn).__mro__[1]

    def spy(self, *args, **kwargs):
        calls.append(self.training)
        return real(self, *args, **kwargs)

    try:
        original.forward = spy
        with torch.no_grad():
            attn(hidden, encoder_hidden_states=states)
            assert calls == []  # absorbed: transformers' forward isn't called
            attn.train()
            attn(hidden, encoder_hidden_states=states)
            assert calls == [True]
            # a model on another device (a GPU; here the meta device) gets transformers' forward
            off = copy.bert.encoder.layer[0].crossattention.self.to("meta")
            off(hidden.to("meta"), encoder_hidden_states=states.to("meta"))
            assert calls == [True, False]
    finally:
        original.forward = real
        attn.eval()


def test_blip_vision_runs_in_chunks_that_match_the_whole_batch(tiny_blip: Path, images,
                                                                monkeypatch: pytest.MonkeyPatch):
    import pickle

    import torch
    from transformers import BlipForConditionalGeneration

    from image2prompt.models import captioners
    from image2prompt.models.captioners import ChunkedBlipVisionModel, chunk_blip_vision

    cap = load_captioner(f"local-dir:{tiny_blip}", device="cpu")
    tower = cap.model.vision_model
    assert type(tower) is ChunkedBlipVisionModel and chunk_blip_vision(cap.model) == 0
    eager = BlipForConditionalGeneration.from_pretrained(tiny_blip).eval()
    _same_random_weights(eager.vision_model, tower, 0, 0.2)
    pixels = cap.processor(images=images[:5], return_tensors="pt")["pixel_values"]
    # the tiny tower fits whole in a chunk: shrink the budget to two images' worth
    one = captioners._CHUNK_BYTES // captioners._vision_chunk(tower.config, pixels, tower.dtype)
    monkeypatch.setattr(captioners, "_CHUNK_BYTES", 2 * one + 1)
    assert captioners._vision_chunk(tower.config, pixels, tower.dtype) == 2
    with torch.inference_mode():
        want = eager.vision_model(pixel_values=pixels)
        # pickled, as Ray ships it (transformers' capturing hooks, installed once hidden
        # states are asked for below, don't pickle, chunked or not)
        copy = pickle.loads(pickle.dumps(tower))
        assert type(copy) is ChunkedBlipVisionModel
        torch.testing.assert_close(copy(pixel_values=pixels).last_hidden_state, want.last_hidden_state,
                                   rtol=1e-5, atol=1e-5)

        calls: list[int] = []
        tower.embeddings.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
        got = tower(pixel_values=pixels)
        assert calls == [2, 2, 1]
        for key in ("last_hidden_state", "pooler_output"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
        as_tuple = tower(pixel_values=pixels, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], want.last_hidden_state, rtol=1e-5, atol=1e-5)
        # asked for hidden states, the tower runs whole (they are captured per forward)
        calls.clear()
        full = tower(pixel_values=pixels, output_hidden_states=True)
        assert calls == [5]
        torch.testing.assert_close(full.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
        want_states = eager.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        assert len(full.hidden_states) == len(want_states) == eager.config.vision_config.num_hidden_layers + 1
        torch.testing.assert_close(full.hidden_states[-1], want_states[-1], rtol=1e-5, atol=1e-5)
        # as when the config asks for them, or for attentions; and 0 selects a layer, not "no"
        for key, value in (("output_hidden_states", True), ("output_attentions", True)):
            calls.clear()
            monkeypatch.setattr(tower.config, key, value)
            assert tower(pixel_values=pixels).last_hidden_state.shape[0] == 5 and calls == [5]
            monkeypatch.setattr(tower.config, key, False)
        calls.clear()
        tower(pixel_values=pixels, output_hidden_states=0)
        assert calls == [5]
        tokens = dict(max_new_tokens=8, do_sample=False, num_beams=1)
        assert torch.equal(cap.model.generate(pixel_values=pixels, **tokens),
                           eager.generate(pixel_values=pixels, **tokens))


def test_vision_chunks_keep_the_largest_activation_under_16_mib():
    import torch
    from transformers import BlipVisionConfig

    from image2prompt.models.captioners import _vision_chunk

    pixels = torch.empty(16, 3, 384, 384)
    base = BlipVisionConfig(image_size=384, patch_size=16)  # blip-base: 768 wide, MLP 3072
    large = BlipVisionConfig(image_size=384, patch_size=16, hidden_size=1024, intermediate_size=4096)
    assert _vision_chunk(base, pixels, torch.float32) == 2  # 577 x 3072 floats: 7.1 MB an image
    assert _vision_chunk(base, pixels, torch.bfloat16) == 4
    assert _vision_chunk(base, pixels.to(torch.bfloat16), torch.float32) == 2  # the tower's dtype counts
    assert _vision_chunk(large, pixels, torch.float32) == 1


def test_absorbed_cross_attention_with_a_wider_encoder_a_shared_image_and_bf16():
    """blip-large's shape (the image encoder wider than the text), one image's states shared by
    several prompts (transformers broadcasts them), and bf16 on a CPU."""
    import copy

    import torch
    from transformers import BlipTextConfig
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    from image2prompt.models.captioners import AbsorbedBlipCrossAttention

    config = BlipTextConfig(hidden_size=64, num_attention_heads=4, encoder_hidden_size=48)
    theirs = BlipTextSelfAttention(config, is_cross_attention=True).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    ours = copy.deepcopy(theirs)
    ours.__class__ = AbsorbedBlipCrossAttention
    hidden = torch.randn(3, 2, 64, generator=gen)
    with torch.inference_mode():
        for states in (torch.randn(3, 9, 48, generator=gen), torch.randn(1, 9, 48, generator=gen)):
            got, got_p = ours(hidden, encoder_hidden_states=states)
            want, want_p = theirs(hidden, encoder_hidden_states=states)
            assert got.shape == want.shape == (3, 2, 64)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got_p, want_p, rtol=1e-4, atol=1e-5)
        states = torch.randn(3, 9, 48, generator=gen)
        want32 = theirs(hidden, encoder_hidden_states=states)[0]
        ours16, theirs16 = copy.deepcopy(ours).bfloat16(), copy.deepcopy(theirs).bfloat16()
        got = ours16(hidden.bfloat16(), encoder_hidden_states=states.bfloat16())[0].float()
        want16 = theirs16(hidden.bfloat16(), encoder_hidden_states=states.bfloat16())[0].float()
        # bf16 both ways: ours is about as near to the fp32 answer as transformers' bf16 path is
        err, ref_err = (got - want32).abs().max(), (want16 - want32).abs().max()
        assert 0 < ref_err < 0.5
        assert err <= 2 * ref_err + 1e-3, (err, ref_err)
