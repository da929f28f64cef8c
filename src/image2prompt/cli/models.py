"""``image2prompt models``: the targets, captioners, name schemes and CLIP models (nothing loads)."""

from __future__ import annotations

import click

from ..catalogue import list_captioners, list_clip_models, list_clip_presets, list_targets
from ..models._registry import VLM_PRESETS
from .app import CONTEXT_SETTINGS


@click.command(context_settings=CONTEXT_SETTINGS, short_help="List targets, CLIP models and captioners.")
def models() -> None:
    """List the --target names, the caption models, the model name schemes and the CLIP
    models open_clip knows (ARCH/TAG). Nothing is loaded or downloaded."""
    out: list[str] = ["Targets (--target): the CLIP backbone of each Stable Diffusion family's text encoder"]
    targets = list_targets()
    width = max(len(t.name) for t in targets)
    for target in targets:
        extra = "  (default)" if target.default else ""
        extra += f"  also: {', '.join(target.aliases)}" if target.aliases else ""
        out.append(f"  {target.name:<{width}}  {target.clip}{extra}")

    out += ["", "Caption models (--caption-model)"]
    captioners = list_captioners(plugins=False)
    width = max(len(c.name) for c in captioners)
    for captioner in captioners:
        if captioner.name in VLM_PRESETS:
            continue
        extra = ("  (default)" if captioner.default
                 else "  (default with --low-vram)" if captioner.low_vram_default else "")
        out.append(f"  {captioner.name:<{width}}  {captioner.repo}{extra}")
    out.append(f"  {'none':<{width}}  no captioner: pass --caption TEXT")
    out += ["", "Vision-language captioners (--caption-model; parameters, bf16 weights, licence)"]
    for name, p in VLM_PRESETS.items():
        out.append(f"  {name:<{width}}  {p.repo}  ({p.params}, {p.memory}, {p.licence}): {p.good_at}")
    out += [
        "",
        "Name schemes (--clip, --caption-model)",
        "  ARCH/TAG          an open_clip model and pretrained tag, e.g. ViT-L-14/openai",
        "  local-dir:PATH    a local folder: open_clip (open_clip_config.json + weights)",
        "                    or transformers (save_pretrained, config.json)",
        "  hf-hub:ORG/REPO   an open_clip model on the Hugging Face Hub (--clip)",
        "  hf:ORG/REPO       a transformers model on the Hub, e.g. hf:openai/clip-vit-large-patch14",
        "  openai:MODEL      a VLM behind an OpenAI-compatible API (--caption-model; see --caption-endpoint)",
        "",
        "Presets (--clip NAME): several models scored together (mean similarity)",
        *[f"  {name:<16}  {' + '.join(clips)}" for name, clips in list_clip_presets().items()],
        "",
    ]
    names = list_clip_models()
    if not names:
        out.append("CLIP models (--clip ARCH/TAG): install open_clip_torch to list them.")
    else:
        out.append(f"CLIP models known to open_clip (--clip ARCH/TAG), {len(names)}:")
        out += [f"  {n}" for n in names]
    click.echo("\n".join(out))
