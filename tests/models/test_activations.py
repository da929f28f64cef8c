from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from image2prompt.models.activations import NativeGELU, gelu_erf, native_gelu
from image2prompt.models.clip import load_clip

TEXTS = ["a photo of a dog", "an oil painting, by a painter, trending on artstation", "a", "red " * 30]


def test_gelu_erf_is_torchs_own_gelu():
    gen = torch.Generator().manual_seed(0)
    for shape in [(7, 13, 96), (13, 96), (1, 96), (1, 1, 96), (96,), (5, 1), ()]:
        x = torch.randn(shape, generator=gen) * 4
        with torch.backends.mkldnn.flags(enabled=False):  # torch's own kernel, not oneDNN's
            native = F.gelu(x)
        ours = gelu_erf(x)
        assert ours.shape == x.shape and ours.dtype == torch.float32 and ours.is_contiguous()
        if x.dim() and x.shape[-1] > 1 and x.numel() // x.shape[-1] > 1:
            assert torch.equal(ours, native), shape
        else:  # one row: F.gelu as it is (one shape per width, whatever kernel torch picks)
            assert torch.equal(ours, F.gelu(x)), shape
        assert torch.allclose(ours, F.gelu(x), rtol=0, atol=2e-6), shape  # oneDNN's, where it runs
    strided = torch.randn(8, 6, generator=gen).t()
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(gelu_erf(strided), F.gelu(strided))
    # the exact form, not the tanh approximation (up to 4.7e-4 away)
    x = torch.randn(7, 13, 96, generator=gen) * 4
    assert (F.gelu(x, approximate="tanh") - gelu_erf(x)).abs().max() > 2e-4


def test_open_clip_text_tower_only(tiny_open_clip: Path):
    enc = load_clip(f"local-dir:{tiny_open_clip}", device="cpu")
    swapped = [n for n, m in enc.model.named_modules() if type(m) is NativeGELU]
    kept = [n for n, m in enc.model.named_modules() if type(m) is torch.nn.GELU]
    assert swapped and all(n.startswith("transformer.") for n in swapped)
    assert kept and all(n.startswith("visual.") for n in kept)

    import open_clip

    ours = enc.encode_texts(TEXTS)
    plain, _, _ = open_clip.create_model_and_transforms(enc.spec.source, pretrained=enc.spec.pretrained)
    assert not any(type(m) is NativeGELU for m in plain.eval().modules())
    with torch.inference_mode():
        full = F.normalize(plain.encode_text(open_clip.get_tokenizer(enc.spec.source)(TEXTS)).float(), dim=-1)
    assert np.abs(ours - full.numpy()).max() <= 1e-5
    assert pickle.loads(pickle.dumps(enc.model)) is not None  # the changed model still pickles


def test_transformers_gelu_tower(tmp_path: Path, tiny_hf_clip: Path):
    # the tiny folder's towers use quick_gelu (transformers' default); real LAION
    # conversions use the exact GELU
    d = tmp_path / "hf-gelu"
    shutil.copytree(tiny_hf_clip, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["hidden_act"] = cfg["vision_config"]["hidden_act"] = "gelu"
    (d / "config.json").write_text(json.dumps(cfg))
    enc = load_clip(str(d), device="cpu")
    swapped = [n for n, m in enc.model.named_modules() if type(m).__name__ == "NativeGELUActivation"]
    assert len(swapped) == 2 and all(n.startswith("text_model.") for n in swapped)
    kept = [n for n, m in enc.model.named_modules() if type(m).__name__ == "GELUActivation"]
    assert len(kept) == 2 and all(n.startswith("vision_model.") for n in kept)

    from transformers import CLIPModel, CLIPTokenizer

    plain = CLIPModel.from_pretrained(d).eval()
    tok = CLIPTokenizer.from_pretrained(d)
    with torch.inference_mode():
        batch = tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        out = plain.get_text_features(**batch)
        full = F.normalize(getattr(out, "pooler_output", out), dim=-1)
    assert np.abs(enc.encode_texts(TEXTS) - full.numpy()).max() <= 1e-5
    assert pickle.loads(pickle.dumps(enc.model)) is not None


def test_falls_back_where_it_does_not_apply(monkeypatch: pytest.MonkeyPatch):
    seen: list[tuple[str, bool]] = []  # (dtype or device, whether F.gelu got a contiguous input)
    real = F.gelu

    def spy(x, approximate="none"):
        seen.append((str(x.dtype) if x.device.type == "cpu" else x.device.type, x.is_contiguous()))
        return real(x, approximate=approximate)

    monkeypatch.setattr(torch.nn.functional, "gelu", spy)
    from transformers.activations import GELUActivation

    block = torch.nn.Sequential(torch.nn.GELU(), torch.nn.GELU(approximate="tanh"), GELUActivation(),
                                GELUActivation(use_gelu_python=True))
    # the tanh one is not exact GELU, the Python GELUActivation calls no F.gelu: left as they are
    assert native_gelu(block) == 2
    assert [type(m).__name__ for m in block] == ["NativeGELU", "GELU", "NativeGELUActivation", "GELUActivation"]
    for module in (block[0], block[2]):
        seen.clear()
        module(torch.randn(3, 5))
        assert seen == [("torch.float32", False)]  # CPU float32: handed over transposed
        module(torch.randn(3, 5).to(torch.bfloat16))
        module(torch.empty(3, 5, device="meta"))
        assert seen[1:] == [("torch.bfloat16", True), ("meta", True)]  # as they are: torch's own choice


_PROBE = textwrap.dedent("""
    import sys, torch
    from image2prompt.models.activations import native_gelu
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).eval()
    if sys.argv[1] == "ours":
        assert native_gelu(mlp) == 1
    with torch.inference_mode():
        for n in range(1, 9):
            for length in range(3, 9):
                mlp(torch.randn(n, length, 32))
""")


def test_no_onednn_kernel_per_shape(tmp_path: Path):
    """The point of the swap: 48 shapes run 48 oneDNN GELU kernels (one compiled per shape)
    with torch's F.gelu, none with ours (ONEDNN_VERBOSE logs each primitive run)."""
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)

    def eltwise_runs(which: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "DNNL_", "OMP_"))}
        env.update(ONEDNN_VERBOSE="1", OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, str(script), which], capture_output=True, text=True, check=False,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return sum(",eltwise," in line for line in (done.stdout + done.stderr).splitlines())

    baseline = eltwise_runs("torch")
    if baseline == 0:
        pytest.skip("this torch does not run GELU through oneDNN on this CPU: nothing to avoid")
    assert baseline >= 48
    assert eltwise_runs("ours") == 0


def test_lean_quick_gelu_is_open_clips_bit_for_bit(tmp_path: Path, tiny_open_clip: Path):
    import open_clip
    from open_clip.transformer import QuickGELU

    from image2prompt.models.activations import lean_quick_gelu

    block = torch.nn.Sequential(QuickGELU(), torch.nn.GELU())
    assert lean_quick_gelu(block) == 1 and type(block[0]).__name__ == "LeanQuickGELU"
    x = torch.randn(9, 7, 128, generator=torch.Generator().manual_seed(1)) * 3
    with torch.inference_mode():
        assert torch.equal(block[0](x), QuickGELU()(x))
    leaf = x.clone().requires_grad_()
    block[0](leaf).sum().backward()  # with autograd: open_clip's own form
    expect = x.clone().requires_grad_()
    QuickGELU()(expect).sum().backward()
    assert torch.equal(leaf.grad, expect.grad)

    # a model built with QuickGELU (as ViT-L-14/openai now is): its text tower gets the lean one
    d = tmp_path / "quick"
    shutil.copytree(tiny_open_clip, d)
    cfg = json.loads((d / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    enc = load_clip(f"local-dir:{d}", device="cpu")
    kinds = {n: type(m).__name__ for n, m in enc.model.named_modules() if "GELU" in type(m).__name__}
    assert {n for n, k in kinds.items() if k == "LeanQuickGELU"} == {n for n in kinds if n.startswith("transformer.")}
    assert {k for n, k in kinds.items() if n.startswith("visual.")} == {"QuickGELU"}
    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{d}")
    with torch.inference_mode():
        full = F.normalize(plain.eval().encode_text(open_clip.get_tokenizer(f"local-dir:{d}")(TEXTS)).float(), dim=-1)
    assert np.abs(enc.encode_texts(TEXTS) - full.numpy()).max() <= 1e-5
    assert pickle.loads(pickle.dumps(enc.model)) is not None
