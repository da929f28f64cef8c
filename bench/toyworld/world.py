"""A procedural world whose images have known factors, for measuring prompt quality.

Every image is drawn from a :class:`Scene`: a subject (shape, colour, count,
placement) on a background colour, rendered with one texture, one medium and one
lighting, sometimes by an invented artist (a fixed palette and texture) and
sometimes in an invented movement (a fixed composition). Out-of-distribution
"abstract" images (noise fields, random strokes) have no factors at all.

Everything is deterministic given a seed: ``sample_scenes(n, seed)`` then
``render(scene)``. Captions (:func:`caption`) compose the factors in varied order
and wording and drop some at random, like web alt text; a few carry generic tags
("highly detailed", "trending on artstation") that say nothing about the image,
so the text tower learns they carry no information.

numpy and Pillow only; nothing here imports torch or image2prompt.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64

SHAPES: dict[str, str] = {  # singular -> plural
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "star": "stars", "ring": "rings", "cross": "crosses",
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 165, 55), "blue": (35, 75, 215), "yellow": (240, 210, 35),
    "purple": (135, 45, 175), "orange": (245, 135, 25), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "navy": (20, 30, 90), "beige": (220, 200, 160),
    "pink": (240, 160, 190), "teal": (20, 130, 130), "brown": (110, 70, 40),
}
COUNTS = {1: "one", 2: "two", 3: "three"}
PLACEMENTS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5),
}
PLACEMENT_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top",
                   "bottom": "at the bottom", "center": "in the center"}

#: Style factors and the phrases a prompt would use for them (the first is canonical).
TEXTURES: dict[str, tuple[str, ...]] = {
    "flat": ("flat colors", "flat shading"),
    "stripes": ("striped pattern", "stripes"),
    "dots": ("polka dot pattern", "dotted texture"),
    "checks": ("checkered pattern", "checkerboard texture"),
    "grain": ("film grain", "grainy texture"),
    "blur": ("blurry", "soft focus"),
    "outline": ("outline drawing", "line art"),
    "pixelated": ("pixelated", "pixel art"),
}
MEDIUMS: dict[str, tuple[str, ...]] = {
    "watercolor": ("a watercolor painting", "watercolor"),
    "ink": ("an ink drawing", "ink sketch"),
    "oil": ("an oil painting", "oil on canvas"),
    "digital": ("digital art", "a digital illustration"),
    "pastel": ("a pastel drawing", "soft pastel"),
    "screenprint": ("a screen print", "silkscreen print"),
}
LIGHTINGS: dict[str, tuple[str, ...]] = {
    "bright": ("bright lighting", "brightly lit"),
    "dim": ("dim lighting", "low light"),
    "vignette": ("vignette", "dark vignette"),
    "contrast": ("high contrast", "harsh contrast"),
    "soft": ("soft lighting", "muted light"),
}
#: Invented movements: each fixes the composition.
MOVEMENTS: dict[str, tuple[str, ...]] = {
    "minimalism": ("minimalism",),
    "maximalism": ("maximalism",),
    "neo-symmetrism": ("neo-symmetrism",),
    "diagonalism": ("diagonalism",),
}
#: Palettes the invented artists use: subject colours and background colours.
PALETTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ember": (("red", "orange"), ("brown",)),
    "ocean": (("blue", "white"), ("teal",)),
    "candy": (("yellow", "purple"), ("pink",)),
    "night": (("yellow", "white"), ("navy",)),
    "earth": (("green", "orange"), ("beige",)),
    "ash": (("black", "white"), ("grey",)),
}
#: Invented artists: name -> (palette, texture). Names are made up on purpose.
ARTISTS: dict[str, tuple[str, str]] = {
    "Zorven Altaq": ("ember", "stripes"), "Mirela Kostrup": ("ember", "grain"),
    "Tavish Quorne": ("ocean", "dots"), "Ilsabet Varnoux": ("ocean", "blur"),
    "Corvin Deltrane": ("candy", "checks"), "Yara Munstedt": ("candy", "outline"),
    "Obrin Falsworth": ("night", "pixelated"), "Sefa Lindqvoro": ("night", "flat"),
    "Hadrik Pellume": ("earth", "dots"), "Nuala Brekkemor": ("earth", "stripes"),
    "Ulmo Zaradine": ("ash", "checks"), "Petrik Vaskalon": ("ash", "grain"),
}
#: Artist-like names that never appear in the world: a prompt naming one names a distractor.
DISTRACTOR_ARTISTS: tuple[str, ...] = (
    "Quillon Marsebrek", "Adela Fenwhistle", "Torvald Ostrakine", "Lunet Carrowby", "Mattias Grellnor",
    "Severin Okafrey", "Ines Dovrakul", "Bastien Umbridgeo", "Kalla Prestwund", "Oskar Velmiranda",
    "Rhea Tandelsom", "Emeric Soltavar", "Jorun Hazelbeck", "Faye Morcantel", "Lucan Drevisholm",
    "Tamsin Oberlake", "Vidar Quenstrom", "Noor Castelvane", "Aurel Pendrigast", "Wynn Haldomire",
)
DISTRACTOR_MEDIUMS: tuple[str, ...] = (
    "a 3D render", "a marble sculpture", "a photograph", "a woodcut print", "a mosaic", "a tapestry",
    "an etching", "a collage",
)
DISTRACTOR_MOVEMENTS: tuple[str, ...] = (
    "baroque", "impressionism", "surrealism", "art nouveau", "cubism", "romanticism", "futurism", "dada",
)
#: Generic tags: in some training captions at random, so they carry no information about the image.
GENERIC_TAGS: tuple[str, ...] = (
    "highly detailed", "4k", "8k", "masterpiece", "sharp focus", "intricate details", "award winning",
    "trending on artstation", "featured on pixiv", "octane render", "unreal engine", "concept art",
    "hyperrealistic", "cinematic", "beautiful", "epic composition", "studio quality", "wallpaper",
    "high quality", "professional", "best quality", "ultra detailed", "hd", "artstation",
)
#: Phrases about things the world never shows, never in training captions.
UNRELATED_PHRASES: tuple[str, ...] = (
    "a forest at dawn", "cyberpunk city", "portrait of a woman", "a dragon", "ocean waves", "a mountain lake",
    "a bowl of fruit", "an old castle", "a sports car", "a cat sleeping", "a busy street", "snowy village",
    "a spaceship", "a field of flowers", "a rainy window", "a wooden cabin", "a horse running", "a lighthouse",
    "steampunk", "fantasy armor", "a desert canyon", "a neon sign", "a birthday cake", "a robot",
    "autumn leaves", "a crowded market", "a waterfall", "a bridge at night", "a candle flame", "a skull",
)
#: Negative-list terms (generic, like the reference's negative list).
NEGATIVE_TERMS: tuple[str, ...] = (
    "ugly", "deformed", "low quality", "worst quality", "bad anatomy", "jpeg artifacts", "watermark",
    "text", "signature", "out of frame", "cropped", "duplicate", "morbid", "mutilated", "disfigured",
    "extra limbs", "bad proportions", "poorly drawn", "lowres", "grainy", "overexposed", "underexposed",
    "noisy", "distorted", "oversaturated", "washed out",
)
#: A generic negative prompt, the baseline negative mode is measured against.
GENERIC_NEGATIVE = "ugly, deformed, low quality, blurry, watermark, text, bad anatomy"

STYLE_FACTORS = ("texture", "medium", "lighting", "artist", "movement")
SUBJECT_FACTORS = ("shape", "colour", "count", "placement", "background")


@dataclass
class Scene:
    """One image's factors. ``abstract`` scenes have none (``kind`` says which kind)."""

    seed: int
    shape: str | None = None
    colour: str | None = None
    count: int | None = None
    placement: str | None = None
    background: str | None = None
    texture: str | None = None
    medium: str | None = None
    lighting: str | None = None
    artist: str | None = None
    movement: str | None = None
    abstract: bool = False
    kind: str = "world"  # world, noise or strokes
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def factors(self) -> dict[str, str]:
        """The factor values this scene has, as strings (count as its word)."""
        out = {}
        for f in SUBJECT_FACTORS + STYLE_FACTORS:
            v = getattr(self, f)
            if v is not None:
                out[f] = COUNTS[v] if f == "count" else str(v)
        return out

    def style_factors(self) -> dict[str, str]:
        return {k: v for k, v in self.factors().items() if k in STYLE_FACTORS}


def sample_scene(rng: random.Random, seed: int, abstract_share: float = 0.0) -> Scene:
    if abstract_share and rng.random() < abstract_share:
        return Scene(seed=seed, abstract=True, kind=rng.choice(("noise", "strokes")))
    s = Scene(seed=seed)
    s.shape = rng.choice(list(SHAPES))
    s.medium = rng.choice(list(MEDIUMS))
    s.lighting = rng.choice(list(LIGHTINGS))
    if rng.random() < 0.5:
        s.artist = rng.choice(list(ARTISTS))
        palette, s.texture = ARTISTS[s.artist]
        colours, backgrounds = PALETTES[palette]
        s.colour, s.background = rng.choice(colours), rng.choice(backgrounds)
    else:
        s.texture = rng.choice(list(TEXTURES))
        s.colour = rng.choice(list(COLOURS))
        s.background = rng.choice(list(BACKGROUNDS))
    if rng.random() < 0.4:
        s.movement = rng.choice(list(MOVEMENTS))
        s.count, s.placement = {"minimalism": (1, "center"), "maximalism": (3, None),
                                "neo-symmetrism": (2, None), "diagonalism": (3, None)}[s.movement]
    else:
        s.count = rng.choice(list(COUNTS))
        s.placement = rng.choice(list(PLACEMENTS))
    return s


def sample_scenes(n: int, seed: int, abstract_share: float = 0.0) -> list[Scene]:
    """``n`` scenes, the same for the same ``seed``; each scene's own seed drives its rendering."""
    rng = random.Random(seed)
    return [sample_scene(rng, seed * 1_000_003 + i, abstract_share) for i in range(n)]


# -- rendering ---------------------------------------------------------------------
def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -np.pi / 2 + k * np.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.38
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return None  # circle, ring


def _draw_shape(mask: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, outline: bool) -> None:
    width = max(2, int(r * 0.22))
    poly = _shape_polygon(shape, cx, cy, r)
    if poly is not None:
        if outline:
            mask.line(poly + [poly[0]], fill=255, width=width)
        else:
            mask.polygon(poly, fill=255)
        return
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "ring" or outline:
        mask.ellipse(box, outline=255, width=max(width, int(r * 0.35)) if shape == "ring" else width)
    else:
        mask.ellipse(box, fill=255)


def _centres(scene: Scene, rng: np.random.RandomState) -> tuple[list[tuple[float, float]], float]:
    s = SIZE
    jitter = lambda: rng.uniform(-0.04, 0.04) * s
    if scene.movement == "minimalism":
        return [(0.5 * s + jitter(), 0.5 * s + jitter())], s * 0.11
    if scene.movement == "neo-symmetrism":
        y = rng.uniform(0.35, 0.65) * s
        return [(0.27 * s, y), (0.73 * s, y)], s * 0.14
    if scene.movement == "diagonalism":
        return [(0.2 * s, 0.2 * s), (0.5 * s, 0.5 * s), (0.8 * s, 0.8 * s)], s * 0.12
    if scene.movement == "maximalism":
        return [(rng.uniform(0.2, 0.8) * s, rng.uniform(0.2, 0.8) * s) for _ in range(3)], s * 0.14
    px, py = PLACEMENTS[scene.placement or "center"]
    n = scene.count or 1
    r = s * (0.16 if n == 1 else 0.12 if n == 2 else 0.1)
    if n == 1:
        return [(px * s + jitter(), py * s + jitter())], r
    # several shapes: along the axis perpendicular to the placement's side
    horizontal = scene.placement in ("top", "bottom", "center")
    offs = np.linspace(-1, 1, n) * (0.25 * s if n == 3 else 0.16 * s)
    return [((px * s + o, py * s) if horizontal else (px * s, py * s + o)) for o in offs], r


def _texture_fill(colour: np.ndarray, texture: str, rng: np.random.RandomState) -> np.ndarray:
    """The subject's fill: an SIZE x SIZE x 3 float array."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = np.broadcast_to(colour, (SIZE, SIZE, 3)).astype(np.float32).copy()
    alt = colour * 0.35 + (np.array([255, 255, 255]) if colour.mean() < 90 else 0) * 0.5
    if texture == "stripes":
        m = ((xx + yy) // 4) % 2 == 0
    elif texture == "dots":
        m = ((xx % 6 - 3) ** 2 + (yy % 6 - 3) ** 2) <= 2
    elif texture == "checks":
        m = ((xx // 4) + (yy // 4)) % 2 == 0
    else:
        return base
    base[m] = alt
    return base


def _saturate(img: np.ndarray, factor: float) -> np.ndarray:
    grey = img.mean(axis=2, keepdims=True)
    return grey + (img - grey) * factor


def render(scene: Scene) -> Image.Image:
    """Draw the scene as a SIZE x SIZE RGB image (deterministic from ``scene.seed``)."""
    rng = np.random.RandomState(scene.seed % (2**32))
    if scene.abstract:
        return _render_abstract(scene, rng)
    bg = np.array(BACKGROUNDS[scene.background], np.float32)
    img = np.broadcast_to(bg, (SIZE, SIZE, 3)).astype(np.float32).copy()
    img += rng.normal(0, 3, size=(1, 1, 3))  # a slight per-image tint, so no two are identical

    centres, r = _centres(scene, rng)
    r *= rng.uniform(0.9, 1.1)
    if scene.movement == "maximalism":  # clutter: small shapes in other colours
        for _ in range(6):
            cm = Image.new("L", (SIZE, SIZE), 0)
            _draw_shape(ImageDraw.Draw(cm), rng.choice(list(SHAPES)), rng.uniform(4, SIZE - 4),
                        rng.uniform(4, SIZE - 4), SIZE * 0.05, False)
            c = np.array(COLOURS[rng.choice(list(COLOURS))], np.float32) * 0.8
            m = np.asarray(cm, np.float32)[..., None] / 255
            img = img * (1 - m) + c * m
    mask_img = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask_img)
    for cx, cy in centres:
        _draw_shape(draw, scene.shape, cx, cy, r, scene.texture == "outline")
    if scene.medium == "ink":  # ink: a dark contour around every shape
        edge = mask_img.filter(ImageFilter.MaxFilter(3))
        contour = np.asarray(edge, np.float32) - np.asarray(mask_img, np.float32)
        img = img * (1 - contour[..., None] / 255) + 15 * (contour[..., None] / 255)
    m = np.asarray(mask_img, np.float32)[..., None] / 255
    fill = _texture_fill(np.array(COLOURS[scene.colour], np.float32), scene.texture, rng)
    img = img * (1 - m) + fill * m

    # medium: colour treatment
    if scene.medium == "watercolor":
        img = _saturate(img, 0.45) * 0.8 + 255 * 0.2
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(0.8)), np.float32)
    elif scene.medium == "ink":
        img = _saturate(img, 0.3)
    elif scene.medium == "oil":
        img = _saturate(img, 1.5)
        low = np.asarray(Image.fromarray((rng.rand(8, 8) * 255).astype(np.uint8)).resize(
            (SIZE, SIZE), Image.BILINEAR), np.float32)[..., None]
        img = img + (low - 128) * 0.15
    elif scene.medium == "pastel":
        img = img * 0.55 + 255 * 0.45
    elif scene.medium == "screenprint":
        img = np.round(np.clip(img, 0, 255) / 85) * 85
        img[..., 0] = np.roll(img[..., 0], 2, axis=1)

    # texture: whole-image treatments
    if scene.texture == "grain":
        img = img + rng.normal(0, 22, size=(SIZE, SIZE, 1))
    elif scene.texture == "blur":
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(2.2)), np.float32)
    elif scene.texture == "pixelated":
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((10, 10), Image.BILINEAR)
        img = np.asarray(small.resize((SIZE, SIZE), Image.NEAREST), np.float32)

    # lighting
    if scene.lighting == "bright":
        img = img * 1.1 + 35
    elif scene.lighting == "dim":
        img = img * 0.45
    elif scene.lighting == "vignette":
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
        img = img * np.clip(1.15 - 2.4 * (xx**2 + yy**2), 0.1, 1)[..., None]
    elif scene.lighting == "contrast":
        img = (img - 128) * 1.9 + 128
    elif scene.lighting == "soft":
        img = (img - 128) * 0.5 + 128
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _render_abstract(scene: Scene, rng: np.random.RandomState) -> Image.Image:
    if scene.kind == "noise":
        cells = int(rng.choice([4, 8, 16, 64]))
        field_ = rng.rand(cells, cells, 3) * 255
        img = Image.fromarray(field_.astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
        return img
    img = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.randint(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.randint(5, 20))):
        pts = [tuple(float(v) for v in rng.uniform(0, SIZE, 2)) for _ in range(int(rng.randint(2, 5)))]
        draw.line(pts, fill=tuple(int(v) for v in rng.randint(0, 256, 3)), width=int(rng.randint(1, 6)))
    return img


# -- phrases and captions ---------------------------------------------------------------
def subject_phrase(scene: Scene, rng: random.Random | None = None) -> str:
    """The subject in words: "two red circles" (varied wording with ``rng``)."""
    n = scene.count or 1
    noun = scene.shape if n == 1 else SHAPES[scene.shape]  # type: ignore[index]
    if rng is None or rng.random() < 0.7:
        det = "a" if n == 1 else COUNTS[n]
        return f"{det} {scene.colour} {noun}"
    if n == 1:
        return rng.choice((f"one {scene.colour} {noun}", f"a single {scene.colour} {noun}"))
    return rng.choice((f"{COUNTS[n]} {noun}, {scene.colour}", f"{scene.colour} {noun}, {COUNTS[n]} of them"))


def subject_caption(scene: Scene) -> str:
    """What a good captioner would say: the subject, its placement and the background, no style."""
    if scene.abstract:
        return "abstract shapes" if scene.kind == "strokes" else "a colourful noise pattern"
    parts = [subject_phrase(scene)]
    if scene.placement:
        parts.append(PLACEMENT_WORDS[scene.placement])
    parts.append(f"on a {scene.background} background")
    return " ".join(parts)


def style_phrases(scene: Scene, rng: random.Random | None = None) -> list[str]:
    """One phrase per style factor the scene has (a random alias with ``rng``)."""
    pick = (lambda opts: opts[0]) if rng is None else (lambda opts: rng.choice(opts))
    out = []
    if scene.texture:
        out.append(pick(TEXTURES[scene.texture]))
    if scene.medium:
        out.append(pick(MEDIUMS[scene.medium]))
    if scene.lighting:
        out.append(pick(LIGHTINGS[scene.lighting]))
    if scene.artist:
        out.append(pick((f"by {scene.artist}", f"inspired by {scene.artist}", f"art by {scene.artist}")))
    if scene.movement:
        out.append(pick(MOVEMENTS[scene.movement]))
    return out


def caption(scene: Scene, rng: random.Random) -> str:
    """A training caption: factors in varied order and wording, some dropped, sometimes a generic tag."""
    if scene.abstract:
        return subject_caption(scene)
    head = subject_phrase(scene, rng)
    if scene.placement and rng.random() < 0.7:
        head += " " + PLACEMENT_WORDS[scene.placement]
    parts = [p for p in style_phrases(scene, rng) if rng.random() < 0.75]
    if rng.random() < 0.8:
        parts.append(rng.choice((f"on a {scene.background} background", f"{scene.background} background")))
    if rng.random() < 0.3:
        parts.extend(rng.sample(GENERIC_TAGS, rng.choice((1, 2))))
    rng.shuffle(parts)
    if rng.random() < 0.2 and parts:  # sometimes the style comes first
        return ", ".join(parts + [head])
    return ", ".join([head] + parts)


def true_prompt(scene: Scene) -> str:
    """The prompt that describes the scene fully: subject caption and every style factor's canonical phrase."""
    return ", ".join([subject_caption(scene)] + style_phrases(scene))
