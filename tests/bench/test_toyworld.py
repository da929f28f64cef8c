"""The quality lab's procedural world: deterministic, factor-true, and its vocabulary pack in sync."""

from __future__ import annotations

import random

import numpy as np

from bench.toyworld import vocab, world
from image2prompt.vocab import load_folder_pack


def test_scenes_and_renders_are_deterministic() -> None:
    a, b = world.sample_scenes(12, seed=5, abstract_share=0.2), world.sample_scenes(12, seed=5, abstract_share=0.2)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert any(s.abstract for s in a) and any(not s.abstract for s in a)
    for s, t in zip(a, b):
        assert np.array_equal(np.asarray(world.render(s)), np.asarray(world.render(t)))
    assert world.render(a[0]).size == (world.SIZE, world.SIZE)
    assert [s.to_dict() for s in world.sample_scenes(12, seed=6)] != [s.to_dict() for s in a]


def test_artists_fix_palette_and_texture_and_movements_fix_composition() -> None:
    for s in world.sample_scenes(400, seed=1):
        if s.artist:
            palette, texture = world.ARTISTS[s.artist]
            colours, backgrounds = world.PALETTES[palette]
            assert s.texture == texture and s.colour in colours and s.background in backgrounds
        if s.movement == "minimalism":
            assert (s.count, s.placement) == (1, "center")
        assert set(s.style_factors()) >= {"texture", "medium", "lighting"}


def test_factors_change_the_pixels() -> None:
    base = world.sample_scenes(1, seed=3)[0]
    pixels = np.asarray(world.render(base), np.float32)
    for field, other in (("texture", "grain" if base.texture != "grain" else "flat"),
                         ("lighting", "dim" if base.lighting != "dim" else "bright"),
                         ("medium", "pastel" if base.medium != "pastel" else "oil")):
        changed = world.Scene(**{**base.to_dict(), field: other})
        assert np.abs(np.asarray(world.render(changed), np.float32) - pixels).mean() > 2.0, field


def test_captions_vary_and_keep_the_subject() -> None:
    scene = next(s for s in world.sample_scenes(50, seed=2) if s.artist)
    rng = random.Random(0)
    caps = {world.caption(scene, rng) for _ in range(40)}
    assert len(caps) > 20
    assert all(world.SHAPES[scene.shape] in c or scene.shape in c for c in caps)
    assert any(scene.artist in c for c in caps) and any(scene.artist not in c for c in caps)  # dropped at times
    truth = world.true_prompt(scene)
    assert truth.startswith(world.subject_caption(scene)) and f"by {scene.artist}" in truth


def test_the_committed_pack_is_the_generated_one_and_loads() -> None:
    for name, items in vocab.lists().items():
        on_disk = (vocab.PACK_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        assert on_disk == items, f"{name}.txt is stale: run python -m bench.toyworld.vocab"
    pack = load_folder_pack(vocab.PACK_DIR)
    assert {"artists", "flavors", "mediums", "movements", "negative", "trendings"} <= set(pack.categories())
    assert "by Zorven Altaq" in pack["artists"].labels


def test_classify_phrases_against_a_scene() -> None:
    s = world.Scene(seed=0, shape="circle", colour="red", count=2, placement="left", background="navy",
                    texture="stripes", medium="ink", lighting="dim", artist="Zorven Altaq")
    assert vocab.classify("striped pattern", s) == "true"
    assert vocab.classify("by Zorven Altaq", s) == "true" and vocab.classify("inspired by Zorven Altaq", s) == "true"
    assert vocab.classify("an ink drawing", s) == "true" and vocab.classify("red", s) == "true"
    assert vocab.classify("film grain", s) == "false" and vocab.classify("by Tavish Quorne", s) == "false"
    assert vocab.classify("highly detailed", s) == "distractor"
    assert vocab.classify("by Quillon Marsebrek", s) == "distractor"
    assert vocab.classify("trending on Artstation", s) == "distractor"


def test_every_factor_phrase_is_in_the_pack() -> None:
    labels = {t for table in load_folder_pack(vocab.PACK_DIR).tables.values() for t in table.labels}
    assert set(vocab.FACTOR_PHRASES) <= labels
