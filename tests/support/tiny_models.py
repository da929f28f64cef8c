"""Build random-weight CLIP and BLIP models offline, saved the way real ones are.

Used by the tests (tiny sizes) and the benchmarks (ViT-B/32 and ViT-L/14 sizes).
They go through the same loading code users hit: open_clip ``local-dir:``
folders and transformers ``save_pretrained`` folders. Random weights exist only
here, on purpose.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Real tower sizes (OpenAI ViT-B/32 and ViT-L/14).
VIT_B_32 = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
VIT_L_14 = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
}


def make_open_clip_dir(out_dir: str | os.PathLike[str], cfg: dict | None = None, seed: int = 0) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` for a random model."""
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = cfg or TINY_OPEN_CLIP
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    json.dump(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                              "std": list(open_clip.OPENAI_DATASET_STD)}},
        open(out / "open_clip_config.json", "w"),
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return out


def write_clip_tokenizer_files(out_dir: Path) -> None:
    """transformers CLIPTokenizer files derived from open_clip's shipped BPE vocabulary."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = [tuple(m.split()) for m in gzip.open(default_bpe()).read().decode().split("\n")[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    json.dump({t: i for i, t in enumerate(vocab)}, open(out_dir / "vocab.json", "w"), ensure_ascii=False)
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    del open_clip


def make_hf_clip_dir(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """A transformers ``save_pretrained`` CLIP folder with a tiny random model."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer_files(out)
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), pad_token="<|endoftext|>")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(out)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 64},
                                                            crop_size={"height": 64, "width": 64}),
                         tokenizer=tok)
    proc.save_pretrained(out)
    return out


BLIP_WORDS = ("a the of on in with photo painting red blue green square circle dog cat man woman "
              "sitting standing table street tree sky water picture drawing of").split()


def make_blip_dir(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """A tiny random BLIP captioner (BERT tokenizer from a small vocab.txt)."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = list(dict.fromkeys(BLIP_WORDS))
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words) + "\n")
    tok = BertTokenizerFast(str(out / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=64,
                         pad_token_id=0, bos_token_id=5, eos_token_id=3, sep_token_id=3),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok).save_pretrained(out)
    return out


def make_custom_text_open_clip_dir(out_dir: str | os.PathLike[str], text_cfg: dict | None = None,
                                   seed: int = 0, embed_dim: int = 32) -> Path:
    """An open_clip ``local-dir:`` folder for a random ``CustomTextCLIP`` (``"custom_text": true``).

    ``text_cfg`` is merged over the tiny text config: e.g. SigLIP-like
    ``{"no_causal_mask": True, "pool_type": "last"}``, or a tower from transformers
    with ``hf_model_name`` (a local config folder) and ``hf_tokenizer_name``. The
    folder then loads through open_clip's factory exactly as a downloaded one does.
    """
    import copy

    import open_clip
    import torch
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(TINY_OPEN_CLIP)
    cfg["embed_dim"] = embed_dim
    cfg["text_cfg"].update(text_cfg or {})
    cfg["custom_text"] = True
    json.dump(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                              "std": list(open_clip.OPENAI_DATASET_STD)}},
        open(out / "open_clip_config.json", "w"),
    )
    torch.manual_seed(seed)
    model_cfg = {k: v for k, v in cfg.items() if k != "custom_text"}
    if "hf_model_name" in model_cfg["text_cfg"]:
        model_cfg["text_cfg"] = {**model_cfg["text_cfg"], "hf_model_pretrained": False}
    model = CustomTextCLIP(**model_cfg)
    state = model.state_dict()
    if model.text.__class__.__name__ == "TextTransformer":
        # open_clip initialises positions with std 0.01: make them matter more,
        # so a wrongly placed position or pooled token cannot hide in the rounding.
        with torch.no_grad():
            state["text.positional_embedding"].normal_(std=0.5)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "open_clip_model.safetensors"))
    return out


def make_bert_text_config_dir(out_dir: str | os.PathLike[str], pad_token_id: int, vocab_size: int = 49408,
                              context_length: int = 77) -> Path:
    """A transformers config folder for a tiny BERT text tower (open_clip's ``hf_model_name``)."""
    from transformers import BertConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    BertConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=2, max_position_embeddings=context_length,
               pad_token_id=pad_token_id).save_pretrained(out)
    return out
