"""In-process vision-language-model captioners: any ``AutoModelForImageTextToText`` checkpoint.

JoyCaption (Llava), Qwen2-VL / Qwen2.5-VL / Qwen3-VL, Gemma 3, SmolVLM / Idefics3 and the
like are asked, through their processor's chat template, to describe each image (one user
turn: the image, then :data:`DEFAULT_INSTRUCTION` or the caller's instruction). Florence-2
has no chat: it is given a task token (:data:`FLORENCE2_TASK`). Requests are batched with
left padding and decoded greedily; only the new tokens are returned, as raw text.

The captioner is a BLIP :class:`~image2prompt.models.captioner_base.Captioner` with its own
``input_side`` and ``caption`` (``offload``/``activate`` are the same), so the pipeline, the
batch engine and ``--low-vram`` use it unchanged. :func:`load_vlm_captioner` is what
:func:`~image2prompt.models.captioners.load_captioner` calls for a folder or repository whose
config is a VLM (see :func:`~image2prompt.models._registry.parse_caption_name`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ModelLoadError
from ._registry import CaptionSpec
from .captioner_base import Captioner
from .device import DeviceLike, dtype_name, resolve_device, resolve_dtype
from .instructions import DEFAULT_INSTRUCTION, FLORENCE2_TASK, caption_identity
from .loading import CAPTION_ADVICE, load_transformers, processor_input_side

log = logging.getLogger(__name__)



class VLMCaptioner(Captioner):
    """A chat vision-language model as a captioner; safe to share across threads.

    ``instruction`` is the text of the user turn that follows the image (default
    :data:`DEFAULT_INSTRUCTION`). Captions are the new tokens' text, special tokens
    skipped and surrounding white space stripped; cleaning them is the caller's job
    (``chat = True`` says so: :func:`image2prompt.prompt.answers.clean_answer`).
    """

    chat = True

    def __init__(self, spec: CaptionSpec, model: Any, processor: Any, device: torch.device,
                 dtype: torch.dtype, max_new_tokens: int = 32, *, instruction: str | None = None) -> None:
        super().__init__(spec, model, processor, device, dtype, max_new_tokens)
        self.instruction = instruction if instruction is not None else self.default_instruction()
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # generation continues every row from its last token

    def default_instruction(self) -> str:
        return DEFAULT_INSTRUCTION

    @property
    def identity(self) -> str:
        """Its name in the fingerprint, with its instruction's hash (another instruction, another caption)."""
        return caption_identity(self.name, self.instruction)

    @property
    def input_side(self) -> int | None:
        """The largest side (pixels) the image processor resizes or crops to; None when it does
        not say, or sizes images by pixel count (Qwen2-VL's dynamic resolution)."""
        ip = getattr(self.processor, "image_processor", self.processor)
        size = getattr(ip, "size", None)
        # the Qwen-VL family's size is pixel counts (its shortest_edge and longest_edge too)
        if hasattr(ip, "temporal_patch_size") or any(
                getattr(source, key, None) is not None for source in (ip, size) for key in ("min_pixels", "max_pixels")):
            return None
        return processor_input_side(self.processor)

    def caption(self, images: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        out: list[str] = []
        step = max(1, int(batch_size))
        for start in range(0, len(images), step):
            out.extend(self._caption_batch(list(images[start : start + step])))
        return out

    def prompt(self) -> str:
        """The text given to the processor with each image: the chat template's rendering."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]}]
        return str(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def _inputs(self, images: list[Any]) -> Any:
        images = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        text = [self.prompt()] * len(images)
        # one list of images per prompt: Gemma 3's processor and others check the pairing
        return self.processor(images=[[im] for im in images], text=text, return_tensors="pt", padding=True)

    def _caption_batch(self, images: list[Any]) -> list[str]:
        if not images:
            return []
        inputs = self._inputs(images)
        with self._lock, torch.inference_mode():
            inputs = inputs.to(self.device)
            for key, value in inputs.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    inputs[key] = value.to(self.dtype)
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                         do_sample=False, num_beams=1)
        return [text.strip() for text in self._decode(tokens, inputs)]

    def _decode(self, tokens: torch.Tensor, inputs: Any) -> list[str]:
        if not getattr(self.model.config, "is_encoder_decoder", False):
            tokens = tokens[:, inputs["input_ids"].shape[1]:]  # the prompt comes back first
        return list(self.processor.batch_decode(tokens, skip_special_tokens=True))


class Florence2Captioner(VLMCaptioner):
    """Florence-2: no chat template; the text is a task token (``instruction``, default
    :data:`FLORENCE2_TASK`), and the encoder-decoder returns only the caption's tokens."""

    def default_instruction(self) -> str:
        return FLORENCE2_TASK

    def prompt(self) -> str:
        return self.instruction


def vlm_dtype(dev: torch.device, precision: str) -> torch.dtype:
    """bf16 on a CUDA device that has it (VLMs are trained in bf16, and some overflow in fp16),
    else what :func:`resolve_dtype` picks; an explicit precision is kept."""
    if precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return resolve_dtype(dev, precision)


def load_vlm_captioner(spec: CaptionSpec, *, device: DeviceLike = "auto", precision: str = "auto",
                       max_new_tokens: int = 32, instruction: str | None = None) -> VLMCaptioner:
    """Load ``spec`` (kind ``vlm`` or ``florence2``) with AutoProcessor and
    AutoModelForImageTextToText; failures raise ModelLoadError (never random weights)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dev = resolve_device(device)
    dtype = vlm_dtype(dev, precision)
    log.info("loading captioner %s (%s) on %s as %s", spec.name, spec.kind, dev, dtype_name(dtype))
    model, processor = load_transformers(AutoModelForImageTextToText, AutoProcessor, spec.source, dtype, dev,
                                         what=f"caption model {spec.name!r}", remote=spec.local_path is None,
                                         advice=CAPTION_ADVICE)
    if spec.kind == "florence2":
        return Florence2Captioner(spec, model, processor, dev, dtype, max_new_tokens, instruction=instruction)
    if getattr(processor, "chat_template", None) is None:
        raise ModelLoadError(f"caption model {spec.name!r}: its processor has no chat template, "
                             "so there is no way to ask it for a caption")
    return VLMCaptioner(spec, model, processor, dev, dtype, max_new_tokens, instruction=instruction)


__all__ = ["FLORENCE2_TASK", "Florence2Captioner", "VLMCaptioner",
           "load_vlm_captioner", "vlm_dtype"]
