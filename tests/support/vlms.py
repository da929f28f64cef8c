"""Build tiny random-weight vision-language models offline, saved the way real ones are.

Each ``make_*_dir`` writes a transformers ``save_pretrained`` folder (model, processor,
tokenizer and chat template) that ``AutoProcessor`` and ``AutoModelForImageTextToText``
load as they would a downloaded checkpoint: Llava (JoyCaption's architecture),
Qwen2-VL, Gemma 3, SmolVLM and Florence-2. The weights are random, so the captions
are random text: tests assert types, counts and equalities, never quality.
Recipes: /work/shared/offline-models.md ("Vision-language models").
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

#: A ChatML template that takes content as a string or as a list of image / text parts.
#: ``{image}`` is replaced by the model's image placeholder.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{image}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "a photo of a dog sitting on the grass in the park",
    "an oil painting of a mountain lake at sunset with dramatic clouds",
    "a close up portrait of a woman with red hair, soft light",
    "a city street at night with neon lights and rain",
    "write a descriptive caption for this image in a formal tone",
    "the image shows a small cat on a wooden table next to a window",
]


def _chat_template(image: str) -> str:
    return _CHATML.replace("{image}", image)


def make_tokenizer(specials: list[str], named: dict[str, str] | None = None, vocab_size: int = 400) -> Any:
    """A tiny BPE tokenizer (printable ASCII alphabet, so any id decodes to text) with ChatML
    specials, ``specials`` and ``named`` (attribute name -> token, e.g. ``image_token``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<eos>", "<bos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    extra = list(dict.fromkeys([*specials, *(named or {}).values()]))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=base + extra,
                                  initial_alphabet=list(string.printable.strip()), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    kwargs: dict[str, Any] = {}
    if named:
        kwargs["extra_special_tokens"] = dict(named)
        others = [s for s in specials if s not in named.values()]
        if others:
            kwargs["additional_special_tokens"] = others
    elif specials:
        kwargs["extra_special_tokens"] = list(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<bos>", unk_token="<unk>", **kwargs)


def _generation_config(tok: Any, **extra: Any) -> Any:
    """Greedy, ends at ``<|im_end|>``; the other special ids suppressed, so a random model's
    captions decode to visible text."""
    from transformers import GenerationConfig

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    suppress = sorted(set(tok.all_special_ids) - {eos})
    return GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            suppress_tokens=suppress, **extra)


def _save(out: Path, model: Any, processor: Any, tok: Any, **gen: Any) -> Path:
    model.generation_config = _generation_config(tok, **gen)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _text_sizes(tok: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                bos_token_id=tok.bos_token_id)


def make_llava_dir(out_dir: str | os.PathLike[str], seed: int = 0, *, side: int = 32, vision_hidden: int = 32,
                   vision_heads: int = 2, text: dict[str, Any] | None = None, **generation: Any) -> Path:
    """A tiny Llava (CLIP vision tower, Llama text model): JoyCaption's architecture. ``side``, the
    vision sizes and ``text`` (text-config overrides) make larger ones (the benchmarks');
    ``generation`` goes into its generation config."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer([], {"image_token": "<image>"})
    tok.chat_template = _chat_template("<image>\n")
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=side, patch_size=8, hidden_size=vision_hidden,
                                       intermediate_size=2 * vision_hidden, num_hidden_layers=2,
                                       num_attention_heads=vision_heads),
        text_config=LlamaConfig(**(_text_sizes(tok) | (text or {}))),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return _save(out, model, processor, tok, **generation)


def make_qwen2_vl_dir(out_dir: str | os.PathLike[str], seed: int = 0, *, text: dict[str, Any] | None = None,
                      vision: dict[str, Any] | None = None, mrope: tuple[int, int, int] = (2, 3, 3),
                      pixels: tuple[int, int] = (256, 4096), **generation: Any) -> Path:
    """A tiny Qwen2-VL (dynamic-resolution vision tower, M-RoPE text model). ``text`` and ``vision``
    (config overrides), ``mrope`` (its sections sum to head_dim / 2) and ``pixels`` (the image
    processor's min and max pixel counts) make larger ones; ``generation`` goes into its generation config."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    tok.chat_template = _chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    rope = {"rope_parameters": {"rope_type": "default", "mrope_section": list(mrope), "rope_theta": 10000.0}}
    cfg = Qwen2VLConfig(
        text_config=_text_sizes(tok) | (text or {}) | rope,
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, in_channels=3,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2) | (vision or {}),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    size = {"shortest_edge": pixels[0], "longest_edge": pixels[1]}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        tokenizer=tok, chat_template=tok.chat_template,
    )
    return _save(out, model, processor, tok, **generation)


def make_gemma3_dir(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """A tiny Gemma 3 (SigLIP vision tower, Gemma 3 text model)."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = make_tokenizer([], named)
    tok.chat_template = _chat_template("<start_of_image>")
    sizes = _text_sizes(tok)
    cfg = Gemma3Config(
        text_config=Gemma3TextConfig(**sizes, head_dim=16, query_pre_attn_scalar=16, sliding_window=64),
        vision_config=SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2),
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids(named["boi_token"]),
        eoi_token_index=tok.convert_tokens_to_ids(named["eoi_token"]),
        image_token_index=tok.convert_tokens_to_ids(named["image_token"]),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}, do_pan_and_scan=False),
        tokenizer=tok, image_seq_length=4, chat_template=tok.chat_template,
    )
    return _save(out, model, processor, tok)


def make_florence2_dir(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """A tiny Florence-2 (DaViT vision tower, BART encoder-decoder): task tokens, no chat."""
    import torch
    from transformers import (
        BartConfig,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer([], {"image_token": "<image>"})
    text = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                      decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      decoder_start_token_id=tok.bos_token_id, forced_eos_token_id=None)
    vision = Florence2VisionConfig(
        embed_dim=[16, 32], depths=[1, 1], num_heads=[1, 2], num_groups=[1, 2], patch_size=[7, 3],
        patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], window_size=4,
        projection_dim=32,
    )
    cfg = Florence2Config(text_config=text, vision_config=vision,
                          image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(cfg)
    processor = Florence2Processor(
        # 32 px through strides 4 and 2: 4 x 4 patches, plus the pooled one
        image_processor=CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                                           crop_size={"height": 32, "width": 32}, image_seq_length=17),
        tokenizer=tok, num_additional_image_tokens=0, post_processor_config={"pure_text": {}},
    )
    return _save(out, model, processor, tok, decoder_start_token_id=tok.bos_token_id)
