"""The ComfyUI node pack (integrations/comfyui), called as ComfyUI calls it, on tiny models."""

from __future__ import annotations

import gc
import importlib.util
import json
import shutil
import subprocess
import sys
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from image2prompt import MODES, Config, Interrogator, SearchSettings
from image2prompt.io import load_image
from image2prompt.models import CAPTION_MODELS, TARGETS
from image2prompt.modes import list_modes
from image2prompt.render import WEAK_MATCH_WORDS, format_analysis
from image2prompt.runner import Runner
from image2prompt.search import weak_threshold
from tests.conftest import make_images

torch = pytest.importorskip("torch")

PACK = Path(__file__).resolve().parents[2] / "integrations" / "comfyui"
INTERROGATE, ANALYZE = "Image2Prompt|Interrogate", "Image2Prompt|Analyze"
TYPE_NAMES = {"IMAGE", "STRING", "INT", "BOOLEAN", "FLOAT"}


@pytest.fixture(scope="module")
def pack() -> Iterator[types.ModuleType]:
    name = "image2prompt_comfyui"
    spec = importlib.util.spec_from_file_location(name, PACK / "__init__.py", submodule_search_locations=[str(PACK)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@pytest.fixture(scope="module")
def nodes(pack: types.ModuleType) -> types.ModuleType:
    return sys.modules[f"{pack.__name__}.nodes"]


@pytest.fixture(autouse=True)
def _no_models_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "nodes" in request.fixturenames:
        request.getfixturevalue("nodes").MODELS.clear()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfy-cache")


@pytest.fixture(scope="module")
def model_inputs(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """The node inputs that load the tiny models (the "custom" choices with local-dir: paths)."""
    return {"clip_model": "custom", "custom_clip": f"local-dir:{tiny_open_clip}", "caption_model": "custom",
            "custom_caption_model": f"local-dir:{tiny_blip}", "vocab": str(small_vocab_dir),
            "cache_dir": str(cache_dir)}


@pytest.fixture(scope="module")
def library(nodes: types.ModuleType, model_inputs: dict[str, Any]) -> Interrogator:
    """The same models loaded by the library itself, on the device the nodes use."""
    return Interrogator.load(Config(
        clip_model=model_inputs["custom_clip"], caption_model=model_inputs["custom_caption_model"],
        device=nodes.host_device(), cache_dir=model_inputs["cache_dir"], vocab=(model_inputs["vocab"],)))


@pytest.fixture(scope="module")
def batch() -> Any:
    """Three images in ComfyUI's IMAGE layout: [B, H, W, C] float32 in [0, 1]."""
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in make_images(3)]
    return torch.from_numpy(np.stack(arrays))


def interrogate(nodes: types.ModuleType, image: Any, model_inputs: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    node = nodes.NODE_CLASS_MAPPINGS[INTERROGATE]()
    with torch.inference_mode():  # as ComfyUI runs every node
        return getattr(node, node.FUNCTION)(image=image, **{"mode": "best", **model_inputs, **inputs})


def analyze(nodes: types.ModuleType, image: Any, model_inputs: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    node = nodes.NODE_CLASS_MAPPINGS[ANALYZE]()
    picked = {k: v for k, v in model_inputs.items() if k in ("clip_model", "custom_clip", "vocab", "cache_dir")}
    with torch.inference_mode():
        return getattr(node, node.FUNCTION)(image=image, **{**picked, **inputs})


# --- the pack's layout and declarations ----------------------------------------------------


def test_mappings_export_both_nodes_under_unique_keys(pack: types.ModuleType) -> None:
    assert set(pack.NODE_CLASS_MAPPINGS) == {INTERROGATE, ANALYZE}
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert len(set(pack.NODE_DISPLAY_NAME_MAPPINGS.values())) == 2
    assert (PACK / pack.WEB_DIRECTORY / "image2prompt.js").is_file()


def _check_input(name: str, spec: Any) -> None:
    assert isinstance(spec, tuple) and spec, name
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    assert isinstance(options, dict), name
    if isinstance(kind, list):  # a dropdown
        assert kind and all(isinstance(c, str) for c in kind), name
        assert options.get("default", kind[0]) in kind, name
        return
    assert kind in TYPE_NAMES, (name, kind)
    if kind in ("STRING", "BOOLEAN", "INT", "FLOAT"):
        assert "default" in options, name
    if kind == "STRING":
        assert isinstance(options["default"], str), name
    if kind == "BOOLEAN":
        assert isinstance(options["default"], bool), name
    if kind in ("INT", "FLOAT"):
        assert options["min"] <= options["default"] <= options["max"], name


@pytest.mark.parametrize("key", [INTERROGATE, ANALYZE])
def test_declarations_follow_comfyui_rules(pack: types.ModuleType, key: str) -> None:
    cls = pack.NODE_CLASS_MAPPINGS[key]
    assert isinstance(cls.__dict__["INPUT_TYPES"], classmethod)
    assert isinstance(cls.__dict__["IS_CHANGED"], classmethod)
    types_ = cls.INPUT_TYPES()
    assert set(types_) <= {"required", "optional"} and "required" in types_
    assert types_["required"]["image"] == ("IMAGE",)
    for section in types_.values():
        for name, spec in section.items():
            _check_input(name, spec)
    assert isinstance(cls.RETURN_TYPES, tuple) and all(t in TYPE_NAMES for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == len(cls.OUTPUT_IS_LIST) == len(cls.RETURN_TYPES)
    assert all(v is True for v in cls.OUTPUT_IS_LIST)
    assert callable(getattr(cls, cls.FUNCTION)) and isinstance(cls.CATEGORY, str) and cls.CATEGORY
    params = getattr(cls, cls.FUNCTION).__code__.co_varnames
    assert all(n in params for section in types_.values() for n in section)  # every input is an argument


def test_choices_are_the_librarys(nodes: types.ModuleType) -> None:
    inputs = nodes.Interrogate.INPUT_TYPES()
    assert inputs["required"]["mode"][0] == list_modes()  # the registry's, plugins' modes included
    assert set(inputs["required"]["mode"][0]) == set(MODES)
    assert inputs["required"]["clip_model"][0] == [*TARGETS, "custom"] == ["sd15", "sd2", "sdxl", "custom"]
    assert inputs["required"]["caption_model"][0] == [*CAPTION_MODELS, "none", "custom"]
    assert {"caption", "max_tokens", "negative", "floor", "keep_loaded", "vocab", "cache_dir"} <= set(inputs["optional"])


def test_registry_metadata_and_requirements() -> None:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    meta = tomllib.loads((PACK / "pyproject.toml").read_text(encoding="utf-8"))
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert {"name", "description", "version", "license", "dependencies"} <= set(project)
    assert project["urls"]["Repository"].startswith("https://")
    assert all(comfy[k] for k in ("PublisherId", "DisplayName", "Icon"))
    assert any(d.startswith("image2prompt") for d in project["dependencies"])
    requirements = [ln.strip() for ln in (PACK / "requirements.txt").read_text().splitlines()]
    assert any(ln.startswith("image2prompt") for ln in requirements)
    readme = (PACK / "README.md").read_text(encoding="utf-8")
    assert f"comfy node install {project['name']}" in readme and "git clone" in readme
    assert "IMAGE2PROMPT_CACHE_DIR" in readme and "HF_HOME" in readme


# --- results equal the library's -----------------------------------------------------------


@pytest.mark.parametrize("inputs", [
    {"mode": "best"},
    {"mode": "fast", "negative": True, "max_tokens": 40},
    {"mode": "classic", "caption": "a test image"},
    {"mode": "negative"},
    {"mode": "fast", "floor": "off"},
    {"mode": "classic", "floor": "1.5"},
], ids=["best", "fast-negative", "classic-caption", "negative", "fast-floor-off", "classic-floor"])
def test_interrogate_gives_the_librarys_prompts(nodes: types.ModuleType, library: Interrogator, batch: Any,
                                                model_inputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    out = interrogate(nodes, batch, model_inputs, **inputs)
    prompts, negatives, captions = out["result"]
    floor = {"off": None, "1.5": 1.5}.get(inputs.get("floor", ""), SearchSettings().floor)
    settings = SearchSettings(mode=inputs["mode"], negative=inputs.get("negative", False),
                              max_tokens=inputs.get("max_tokens", 77), floor=floor)
    records = list(Runner(library, settings, caption=inputs.get("caption")).run(batch))
    expected = [r.result for r in records if r.result is not None]
    assert len(expected) == 3, [r.error for r in records]
    assert prompts == [r.prompt for r in expected] and all(prompts)
    assert negatives == [r.negative.prompt if r.negative else "" for r in expected]
    assert all(negatives) == bool(inputs.get("negative"))
    assert captions == [r.caption or "" for r in expected]
    if "caption" in inputs:
        assert captions == [inputs["caption"]] * 3
    assert len(out["ui"]["text"]) == 3 and all(t.startswith(p) for t, p in zip(out["ui"]["text"], prompts))


def test_interrogate_equals_interrogate_on_pil_images(nodes: types.ModuleType, library: Interrogator,
                                                     batch: Any, model_inputs: dict[str, Any]) -> None:
    prompts = interrogate(nodes, batch, model_inputs, mode="fast")["result"][0]
    pil = [load_image(batch[i].numpy()) for i in range(3)]
    assert prompts == [library.interrogate(im, "fast").prompt for im in pil]


def test_analyze_gives_the_librarys_analysis(nodes: types.ModuleType, library: Interrogator, batch: Any,
                                             model_inputs: dict[str, Any]) -> None:
    out = analyze(nodes, batch, model_inputs, top_n=4, caption="a test image")
    texts, docs = out["result"]
    assert len(texts) == len(docs) == 3 and out["ui"]["text"] == texts
    for i, (text, doc) in enumerate(zip(texts, docs)):
        want = library.analyze(load_image(batch[i].numpy()), 4, caption="a test image", source=f"image {i + 1} of 3")
        assert text == format_analysis(want)
        data = json.loads(doc)
        assert data == json.loads(want.to_json())
        assert all(len(ps) == 4 for ps in data["categories"].values())
        assert all(p["hypothesis"] == (c == "artists") for c, ps in data["categories"].items() for p in ps)
        assert "(hypothesis)" in text
        assert (WEAK_MATCH_WORDS in text) == data["weak_match"]
    # the flag follows the threshold for this table's size (docs/confidence.md)
    flavors = len(library.vocab["flavors"].labels)
    for d in map(json.loads, docs):
        assert d["weak_match"] == (d["match_strength"] < weak_threshold(SearchSettings().weak_z, flavors))


def test_is_changed_is_keyed_on_the_pixels_and_the_settings(nodes: types.ModuleType, batch: Any) -> None:
    def key(image: Any = None, **changes: Any) -> str:
        inputs = {"mode": "best", "clip_model": "sd15", "caption_model": "none", **changes}
        return nodes.Interrogate.IS_CHANGED(**inputs, **({} if image is None else {"image": image}))

    changed = batch.clone()
    changed[1, 0, 0, 0] = 0.5 if float(changed[1, 0, 0, 0]) != 0.5 else 0.25
    first = key(batch)
    assert isinstance(first, str) and first == key(batch.clone())
    assert len({first, key(batch, mode="fast"), key(changed), key(batch.double())}) == 4
    # ComfyUI passes only the widget values (a linked image is left out): stable, keyed on them
    assert key() == key() != key(mode="fast") and key() != first
    assert nodes.Analyze.IS_CHANGED(clip_model="sd15", top_n=5) == nodes.Analyze.IS_CHANGED(clip_model="sd15", top_n=5)
    assert nodes.Analyze.IS_CHANGED(image=batch, top_n=5) != nodes.Analyze.IS_CHANGED(image=changed, top_n=5)


# --- errors are one plain line -------------------------------------------------------------


def _bad_inputs(tmp: Path, batch: Any) -> dict[str, tuple[dict[str, Any], str]]:
    return {
        "no batch dimension": ({"image": batch[0]}, "[B,H,W,C]"),
        "channels first": ({"image": batch.permute(0, 3, 1, 2)}, "[B,H,W,C]"),
        "empty batch": ({"image": batch[:0]}, "[B,H,W,C]"),
        "not a tensor": ({"image": None}, "got a NoneType"),
        "values over 1": ({"image": batch * 255.0}, "image 1 of 3: float pixel values must be in [0, 1]"),
        "missing custom clip": ({"custom_clip": f"local-dir:{tmp / 'nope'}"}, f"{tmp / 'nope'} not found"),
        "empty custom clip": ({"custom_clip": ""}, "custom_clip is empty"),
        "missing captioner": ({"custom_caption_model": f"local-dir:{tmp / 'nope'}"}, "no config.json"),
        "no caption at all": ({"caption_model": "none"}, "best mode needs a caption, and none was given or generated: "
                                                          "give a caption or load a caption model (or use negative "
                                                          "or style mode)"),
        "unknown mode": ({"mode": "worst"}, "unknown mode 'worst'"),
        "max_tokens too small": ({"max_tokens": 1}, "max_tokens must be at least 3"),
        "missing vocab": ({"vocab": str(tmp / "no-vocab")}, str(tmp / "no-vocab")),
    }


BAD_CASES = ["no batch dimension", "channels first", "empty batch", "not a tensor", "values over 1",
             "missing custom clip", "empty custom clip", "missing captioner", "no caption at all", "unknown mode",
             "max_tokens too small", "missing vocab"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_plain_line(nodes: types.ModuleType, batch: Any, model_inputs: dict[str, Any],
                                     tmp_path: Path, case: str) -> None:
    cases = _bad_inputs(tmp_path, batch)
    assert list(cases) == BAD_CASES
    changes, words = cases[case]
    inputs = {**model_inputs, "keep_loaded": False, **changes}
    image = inputs.pop("image", batch)
    with pytest.raises(Exception) as caught:
        interrogate(nodes, image, {}, **inputs)
    err = caught.value
    message = str(err)
    assert type(err) in (ValueError, RuntimeError), type(err)
    assert words in message, message
    assert "\n" not in message and "Traceback" not in message and 'File "' not in message
    assert err.__cause__ is None and (err.__suppress_context__ or err.__context__ is None)
    assert len(nodes.MODELS) == 0


def test_analyze_bad_image_is_one_plain_line(nodes: types.ModuleType, batch: Any,
                                             model_inputs: dict[str, Any]) -> None:
    nan = batch.clone()
    nan[2] = float("nan")
    with pytest.raises(ValueError, match=r"^image 3 of 3: float array contains NaN or infinite values$"):
        analyze(nodes, nan, model_inputs, top_n=3, keep_loaded=False)
    with pytest.raises(ValueError, match=r"\[B,H,W,C\]"):
        analyze(nodes, batch[0], model_inputs)


# --- models: kept, reused, freed -----------------------------------------------------------


def test_keep_loaded_reuses_one_interrogator(nodes: types.ModuleType, batch: Any,
                                             model_inputs: dict[str, Any]) -> None:
    interrogate(nodes, batch, model_inputs, mode="fast", caption="a test", keep_loaded=True)
    first = nodes.MODELS.current
    assert first is not None and len(nodes.MODELS) == 1
    interrogate(nodes, batch[:1], model_inputs, mode="classic", caption="a test", negative=True, keep_loaded=True)
    assert nodes.MODELS.current is first
    analyze(nodes, batch[:1], model_inputs, top_n=2, keep_loaded=True)  # no captioner needed: shares it
    assert nodes.MODELS.current is first
    interrogate(nodes, batch[:1], {**model_inputs, "caption_model": "none"}, mode="fast", caption="x")
    assert nodes.MODELS.current is not first and len(nodes.MODELS) == 1  # other models: one set at a time


def test_keep_loaded_false_frees_the_models(nodes: types.ModuleType, batch: Any,
                                            model_inputs: dict[str, Any]) -> None:
    interrogate(nodes, batch[:1], model_inputs, mode="fast", caption="a test", keep_loaded=True)
    held = weakref.ref(nodes.MODELS.current)
    interrogate(nodes, batch, model_inputs, mode="fast", caption="a test", keep_loaded=False)  # reuses, then frees
    assert len(nodes.MODELS) == 0 and nodes.MODELS.current is None
    gc.collect()
    assert held() is None
    analyze(nodes, batch[:1], model_inputs, top_n=2, keep_loaded=False)
    assert len(nodes.MODELS) == 0


class Interrupted(Exception):
    """What ComfyUI raises when the user presses Cancel (comfy's InterruptProcessingException)."""


class FakeComfy:
    """Stand-ins for ComfyUI's comfy.model_management and comfy.utils, recording the calls."""

    def __init__(self) -> None:
        self.devices_asked = self.emptied = 0
        self.bars: list[list[int]] = []  # per ProgressBar: its total, then each update
        self.interrupt = False

    # comfy.model_management
    def get_torch_device(self) -> Any:
        self.devices_asked += 1
        return torch.device("cpu")

    def soft_empty_cache(self) -> None:
        self.emptied += 1

    def throw_exception_if_processing_interrupted(self) -> None:
        if self.interrupt:
            raise Interrupted("Processing interrupted")

    # comfy.utils
    def ProgressBar(self, total: int) -> Any:
        self.bars.append([total])
        return types.SimpleNamespace(update=self.bars[-1].append)


@pytest.fixture
def fake_comfy(monkeypatch: pytest.MonkeyPatch) -> FakeComfy:
    fake = FakeComfy()
    comfy, mm, utils = (types.ModuleType(n) for n in ("comfy", "comfy.model_management", "comfy.utils"))
    vars(mm).update(get_torch_device=fake.get_torch_device, soft_empty_cache=fake.soft_empty_cache,
                    throw_exception_if_processing_interrupted=fake.throw_exception_if_processing_interrupted)
    vars(utils).update(ProgressBar=fake.ProgressBar)
    vars(comfy).update(__path__=[], model_management=mm, utils=utils)  # a package with both modules
    for module in (comfy, mm, utils):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return fake


def test_comfy_model_management_is_used_where_importable(nodes: types.ModuleType, batch: Any,
                                                         model_inputs: dict[str, Any], fake_comfy: FakeComfy) -> None:
    assert nodes.host_device() == "cpu"
    interrogate(nodes, batch, model_inputs, mode="fast", caption="a test", keep_loaded=True)
    assert nodes.MODELS.current is not None and nodes.MODELS.current.config.device == "cpu"
    assert fake_comfy.devices_asked >= 2 and fake_comfy.emptied == 0
    assert fake_comfy.bars == [[3, 1, 1, 1]]  # ComfyUI's progress bar, one step per image
    fake_comfy.interrupt = True  # Cancel in ComfyUI: its own exception passes through, untouched
    with pytest.raises(Interrupted):
        interrogate(nodes, batch, model_inputs, mode="fast", caption="a test", keep_loaded=False)
    assert len(nodes.MODELS) == 0 and fake_comfy.emptied == 1  # freed, and the cache handed back


# --- installed the way ComfyUI installs it -------------------------------------------------

LOADER = """
import importlib.util, json, os, sys
path = sys.argv[1]
name = path.replace(".", "_x_")  # what ComfyUI's nodes.load_custom_node calls a folder's module
spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
print(json.dumps({"keys": sorted(module.NODE_CLASS_MAPPINGS), "web": module.WEB_DIRECTORY,
                  "models_loaded": [m for m in ("open_clip", "transformers") if m in sys.modules],
                  "tests_importable": importlib.util.find_spec("tests") is not None}))
"""


@pytest.mark.parametrize("folder", ["image2prompt", "comfyui-image2prompt"])
def test_installs_from_a_clean_custom_nodes_folder(tmp_path: Path, folder: str) -> None:
    target = tmp_path / "ComfyUI" / "custom_nodes" / folder
    shutil.copytree(PACK, target, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-I", "-c", LOADER, str(target)], check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["keys"] == sorted([ANALYZE, INTERROGATE]) and seen["web"] == "./web"
    assert seen["models_loaded"] == []  # importing the pack loads no model library
    assert not seen["tests_importable"]  # only the installed image2prompt was on the path


def test_the_floor_field_turns_the_floor_off_and_refuses_nonsense(nodes: types.ModuleType, batch: Any,
                                                                  model_inputs: dict[str, Any]) -> None:
    off = interrogate(nodes, batch, model_inputs, mode="fast", floor="off")["result"][0]
    default = interrogate(nodes, batch, model_inputs, mode="fast")["result"][0]
    assert off != default  # random weights: the default floor keeps some of fast mode's phrases out
    with pytest.raises(ValueError, match="floor 'high'"):
        interrogate(nodes, batch, model_inputs, mode="fast", floor="high")


def test_a_vlm_captions_in_the_node_and_its_question_is_an_input(nodes: types.ModuleType, batch: Any,
                                                                  model_inputs: dict[str, Any],
                                                                  tiny_llava: Path) -> None:
    """A tiny VLM through custom_caption_model, with caption_type and caption_prompt as node inputs."""
    vlm = {**model_inputs, "custom_caption_model": f"local-dir:{tiny_llava}", "keep_loaded": True}
    out = interrogate(nodes, batch, vlm, mode="fast", caption_type="booru")
    prompts, _, captions = out["result"]
    assert len(prompts) == 3 and all(prompts) and len(captions) == 3
    loaded = nodes.MODELS.current
    assert loaded is not None and loaded.captioner.instruction.startswith("Write a list of Booru-style tags")
    interrogate(nodes, batch[:1], vlm, mode="fast", caption_prompt="Describe {name}.")
    assert nodes.MODELS.current.captioner.instruction == "Describe the subject."  # another question: reloaded
    with pytest.raises(ValueError, match="placeholder that is not"):
        interrogate(nodes, batch[:1], vlm, mode="fast", caption_prompt="Describe {nope}.")
    nodes.MODELS.clear()
