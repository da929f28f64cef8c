from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
from PIL import Image, features

from image2prompt.errors import ImageLoadError
from image2prompt.io import IMAGE_EXTENSIONS, ImageSource, expand_sources, image_extensions


def _touch(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _names(items: list[ImageSource | ImageLoadError]) -> list[str]:
    return [item.name if isinstance(item, ImageSource) else f"ERR {item.source}" for item in items]


def _rel(root: Path, items: list[ImageSource | ImageLoadError]) -> list[str]:
    out = []
    for item in items:
        assert isinstance(item, ImageSource), item
        assert item.kind == "path"
        out.append(Path(item.name).relative_to(root).as_posix())
    return out


def test_image_extensions_come_from_pillow() -> None:
    Image.init()
    opens = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".qoi", ".tga"} <= IMAGE_EXTENSIONS
    assert IMAGE_EXTENSIONS <= opens
    assert image_extensions() is image_extensions()  # computed once
    assert IMAGE_EXTENSIONS == image_extensions()
    # Pillow only identifies these (no decoder without a plug-in): not taken from folders.
    assert not {".h5", ".hdf", ".bufr", ".grib", ".mpg", ".mpeg", ".txt", ".json"} & IMAGE_EXTENSIONS
    if features.check("avif"):
        assert {".avif", ".avifs"} <= IMAGE_EXTENSIONS


def test_folder_is_walked_recursively_sorted_and_filtered(tmp_path: Path) -> None:
    for rel in [
        "b.Png",
        "a.JPG",
        "sub/z.TIFF",
        "sub/deeper/c.webp",
        "a/x.jpeg",
        "notes.txt",
        "sub/data.npy",
        "noext",
        ".hidden.png",
        ".cache/inside.png",
        "sub/.git/obj.jpg",
    ]:
        _touch(tmp_path, rel)

    items = list(expand_sources([tmp_path]))

    # Sorted by relative POSIX path: "a.JPG" < "a/x.jpeg" because "." < "/".
    assert _rel(tmp_path, items) == [
        "a.JPG",
        "a/x.jpeg",
        "b.Png",
        "sub/deeper/c.webp",
        "sub/z.TIFF",
    ]
    first = items[0]
    assert isinstance(first, ImageSource)
    assert first.ref == tmp_path / "a.JPG"


def test_inputs_keep_their_order_and_kinds(tmp_path: Path) -> None:
    a = _touch(tmp_path, "a.png")
    folder = tmp_path / "dir"
    _touch(folder, "one.jpg")
    image = Image.new("RGB", (2, 2))

    items = list(expand_sources([str(folder), b"raw-bytes", "https://example.com/x.png", image, a]))

    assert [i.kind for i in items if isinstance(i, ImageSource)] == [
        "path",
        "bytes",
        "url",
        "pil",
        "path",
    ]
    assert _names(items) == [
        os.path.join(str(folder), "one.jpg"),
        "<bytes>",
        "https://example.com/x.png",
        "<PIL.Image>",
        str(a),
    ]
    assert items[1].ref == b"raw-bytes"  # type: ignore[union-attr]
    assert items[3].ref is image  # type: ignore[union-attr]


def test_explicit_file_is_kept_whatever_its_extension(tmp_path: Path) -> None:
    path = _touch(tmp_path, "photo.dat")
    (item,) = expand_sources([str(path)])
    assert item == ImageSource(str(path), "path", path)


def test_single_string_input_is_not_iterated_per_character(tmp_path: Path) -> None:
    path = _touch(tmp_path, "one.png")
    assert _names(list(expand_sources(str(path)))) == [str(path)]


def test_url_scheme_is_case_insensitive() -> None:
    (item,) = expand_sources(["HTTP://127.0.0.1/a.png"])
    assert isinstance(item, ImageSource) and item.kind == "url"


def test_missing_path_yields_error_and_batch_continues(tmp_path: Path) -> None:
    good = _touch(tmp_path, "good.png")
    missing = str(tmp_path / "nope.jpg")

    items = list(expand_sources([missing, good]))

    assert isinstance(items[0], ImageLoadError)
    assert items[0].source == missing
    assert items[0].reason == "no such file or directory"
    assert str(items[0]) == f"{missing}: no such file or directory"
    assert isinstance(items[1], ImageSource) and items[1].ref == good


def test_folder_without_images_names_the_extensions_it_found(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for rel in ["readme.txt", "b.TXT", "sub/meta.json", "noext", ".hidden.jpg", ".git/x.png"]:
        _touch(folder, rel)

    (item,) = expand_sources([folder])

    assert isinstance(item, ImageLoadError)
    assert item.source == str(folder)
    # Most common first; hidden files are not counted.
    assert item.reason == "folder contains no images (found 4 files: .txt, .json, no extension)"
    assert str(item) == f"{folder}: folder contains no images (found 4 files: .txt, .json, no extension)"


def test_folder_without_images_one_file(tmp_path: Path) -> None:
    _touch(tmp_path / "d", "notes.txt")
    (item,) = expand_sources([tmp_path / "d"])
    assert isinstance(item, ImageLoadError)
    assert item.reason == "folder contains no images (found 1 file: .txt)"


def test_folder_without_images_lists_at_most_a_few_extensions(tmp_path: Path) -> None:
    for i in range(12):
        _touch(tmp_path / "d", f"f{i}.x{i:02d}")
    (item,) = expand_sources([tmp_path / "d"])
    assert isinstance(item, ImageLoadError)
    assert item.reason == ("folder contains no images (found 12 files: "
                           ".x00, .x01, .x02, .x03, .x04, .x05, .x06, .x07 and 4 other extensions)")


def test_empty_folder_says_it_is_empty(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    (folder / "sub" / "deeper").mkdir(parents=True)

    (item,) = expand_sources([folder])

    assert isinstance(item, ImageLoadError)
    assert (item.source, item.reason) == (str(folder), "folder is empty")


def test_folder_with_only_hidden_files(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    _touch(folder, ".DS_Store")
    _touch(folder, ".thumbs/a.png")
    (item,) = expand_sources([folder])
    assert isinstance(item, ImageLoadError)
    assert item.reason == "folder contains no images (only hidden files, which are skipped)"


def _avif_bytes() -> bytes:
    if not features.check("avif"):
        pytest.skip("this Pillow cannot write AVIF")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="AVIF")
    return buffer.getvalue()


def test_folder_takes_every_format_pillow_opens(tmp_path: Path) -> None:
    _touch(tmp_path, "b.avif", _avif_bytes())
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "c.QOI", format="QOI")

    items = list(expand_sources([tmp_path]))

    assert _rel(tmp_path, items) == ["a.png", "b.avif", "c.QOI"]
    from image2prompt.io import load_image

    assert load_image(items[1]).size == (8, 8)  # type: ignore[arg-type]


def test_glob_takes_every_format_pillow_opens(tmp_path: Path) -> None:
    _touch(tmp_path, "b.avif", _avif_bytes())
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    _touch(tmp_path, "notes.txt")
    assert _rel(tmp_path, list(expand_sources([str(tmp_path / "*")]))) == ["a.png", "b.avif"]


def test_skipped_files_are_logged_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "photos"
    for rel in ["a.png", "notes.txt", "sub/data.npy", "noext", ".hidden.txt", ".cache/x.txt"]:
        _touch(folder, rel)

    with caplog.at_level(logging.DEBUG, logger="image2prompt"):
        items = list(expand_sources([folder]))

    assert _rel(folder, items) == ["a.png"]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [
        f"skipping {os.path.join(str(folder), 'noext')}: not an image file Pillow can open",
        f"skipping {os.path.join(str(folder), 'notes.txt')}: not an image file Pillow can open",
        f"skipping {os.path.join(str(folder), 'sub', 'data.npy')}: not an image file Pillow can open",
    ]
    assert all(r.name == "image2prompt.io.sources" for r in caplog.records)
    # Hidden files and folders are never mentioned above debug level.
    assert not any("hidden" in m or ".cache" in m for m in info)


def test_skipped_files_of_a_glob_are_logged_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path, "a.png")
    _touch(tmp_path, "notes.txt")
    with caplog.at_level(logging.INFO, logger="image2prompt"):
        list(expand_sources([str(tmp_path / "*")]))
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping {tmp_path / 'notes.txt'}: not an image file Pillow can open"]


def test_glob_is_expanded_sorted_and_filtered(tmp_path: Path) -> None:
    for rel in ["b.png", "a.PNG", "c.txt", "sub/d.png", "sub/e.jpg"]:
        _touch(tmp_path, rel)

    flat = list(expand_sources([str(tmp_path / "*")]))
    assert _rel(tmp_path, flat) == ["a.PNG", "b.png"]

    recursive = list(expand_sources([str(tmp_path / "**" / "*.png")]))
    assert _rel(tmp_path, recursive) == ["b.png", "sub/d.png"]

    # A folder matched by a pattern is not walked again (no duplicates from "**").
    everything = list(expand_sources([str(tmp_path / "**")]))
    assert _rel(tmp_path, everything) == ["a.PNG", "b.png", "sub/d.png", "sub/e.jpg"]


def test_glob_matching_nothing_yields_error(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.jpg")
    (item,) = expand_sources([pattern])
    assert isinstance(item, ImageLoadError)
    assert item.source == pattern
    assert item.reason == "pattern matched no files"


def test_glob_matching_only_non_images_yields_error(tmp_path: Path) -> None:
    _touch(tmp_path, "notes.txt")
    (item,) = expand_sources([str(tmp_path / "*")])
    assert isinstance(item, ImageLoadError)
    assert item.reason == "pattern matched no image files (found 1 file: .txt)"


def test_existing_file_with_glob_characters_is_taken_literally(tmp_path: Path) -> None:
    path = _touch(tmp_path, "shot[1].png")
    (item,) = expand_sources([str(path)])
    assert isinstance(item, ImageSource) and item.ref == path


def test_unsupported_input_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="int"):
        list(expand_sources([42]))  # type: ignore[list-item]


def test_image_source_repr_hides_payload() -> None:
    source = ImageSource("<bytes>", "bytes", b"\x00" * 10_000)
    assert repr(source) == "ImageSource(name='<bytes>', kind='bytes')"


def test_linked_folders_are_followed_once_and_loops_are_named(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    Image.new("RGB", (4, 4)).save(_touch(elsewhere, "far.png"))
    folder = tmp_path / "photos"
    Image.new("RGB", (4, 4)).save(_touch(folder, "real/a.png"))
    os.symlink(elsewhere, folder / "linked")  # a link to a folder outside: followed
    os.symlink(folder / "real", folder / "again")  # a second way into a folder: walked once
    os.symlink(folder, folder / "real" / "loop")  # a link back up the tree: not followed

    with caplog.at_level(logging.INFO, logger="image2prompt"):
        items = list(expand_sources([folder]))

    assert _rel(folder, items) == ["linked/far.png", "real/a.png"]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"skipping {folder / 'again'}: a link to a folder walked already ({folder / 'real'})" in info
    assert f"skipping {folder / 'real' / 'loop'}: a link to a folder walked already ({folder})" in info
