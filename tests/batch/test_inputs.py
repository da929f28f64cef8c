"""The inputs of ``image2prompt batch``: every kind is a real file made in tmp_path."""

from __future__ import annotations

import csv
import io
import itertools
import os
import pickle
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from image2prompt.batch import inputs as inputs_module
from image2prompt.batch.inputs import InputItem, iter_inputs
from image2prompt.errors import Image2PromptError, ImageLoadError
from tests.support.http import serve_folder


def _png(seed: int = 0, size: tuple[int, int] = (8, 6)) -> bytes:
    im = Image.new("RGB", size, (seed * 40 % 256, 100, 200))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _err(item: InputItem) -> str:
    assert item.read is None and item.error is not None, item
    assert item.error.source == item.source
    return item.error.reason


def _read_err(item: InputItem) -> str:
    assert item.read is not None and item.error is None, item
    with pytest.raises(ImageLoadError) as info:
        item.read()
    assert info.value.source == item.source
    assert "\n" not in str(info.value)
    return info.value.reason


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# --- files, folders, globs -------------------------------------------------------------


def test_folder_with_nested_images_and_broken_files(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    a = _write(root / "a.png", _png(1))
    deep = _write(root / "sub" / "deeper" / "b.png", _png(2))
    garbage = _write(root / "sub" / "broken.jpg", b"not really a jpeg")
    _write(root / "sub" / "empty.png", b"")
    _write(root / "notes.md", b"# not an image")

    items = list(iter_inputs([str(root)]))

    names = [Path(i.source).relative_to(root).as_posix() for i in items]
    assert names == ["a.png", "sub/broken.jpg", "sub/deeper/b.png", "sub/empty.png"]
    by_name = dict(zip(names, items, strict=True))
    assert by_name["a.png"].path == a and by_name["a.png"].read() == a.read_bytes()
    assert by_name["sub/deeper/b.png"].read() == deep.read_bytes()
    # Bytes are handed on undecoded: a broken image is the decoder's to report.
    assert by_name["sub/broken.jpg"].read() == garbage.read_bytes()
    assert _read_err(by_name["sub/empty.png"]) == "empty file"
    assert all(i.caption is None for i in items)


def test_files_are_read_only_when_asked(tmp_path: Path) -> None:
    first = _write(tmp_path / "one.png", _png(1))
    _write(tmp_path / "two.png", _png(2))
    item = next(iter_inputs([str(first), str(tmp_path / "two.png")]))
    first.unlink()  # gone before read(): nothing was read while iterating
    assert _read_err(item) == "no such file"


def test_file_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "big.png", b"x" * 2000)
    monkeypatch.setattr(inputs_module, "MAX_FILE_BYTES", 1000)
    (item,) = iter_inputs([str(path)])
    assert _read_err(item).startswith("file larger than the ")


def test_glob_and_missing_inputs(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.txt"):
        _write(tmp_path / name, _png() if name.endswith(".png") else b"x")
    items = list(iter_inputs([str(tmp_path / "*.png"), str(tmp_path / "nope.png"), str(tmp_path / "*.gif")]))
    assert [Path(i.source).name for i in items[:2]] == ["a.png", "b.png"]
    assert all(i.read is not None for i in items[:2])
    assert _err(items[2]) == "no such file or directory"
    assert _err(items[3]) == "pattern matched no files"
    assert len(items) == 4


def test_item_has_exactly_one_of_read_and_error() -> None:
    with pytest.raises(ValueError):
        InputItem("x")
    with pytest.raises(ValueError):
        InputItem("x", read=lambda: b"", error=ImageLoadError("x", "bad"))


# --- lists -----------------------------------------------------------------------------


def test_list_resolves_entries_against_its_folder(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    a = _write(imgs / "a.png", _png(1))
    _write(imgs / "more" / "m.png", _png(2))
    _write(imgs / "g1.png", _png(3))
    absolute = _write(tmp_path / "elsewhere" / "abs.png", _png(4))
    listing = tmp_path / "runs" / "out.failed.txt"
    listing.parent.mkdir()
    listing.write_text(
        "\ufeff# failures of the last run\n"
        "../imgs/a.png\n"
        "\n"
        "   # an indented comment\n"
        "../imgs/missing.png\n"
        f"{absolute}\n"
        "../imgs/more\n"  # a folder expands
        "../imgs/g*.png\r\n"  # a glob expands, CRLF is fine
        "http://example.invalid/x.png\n",
        encoding="utf-8",
    )

    items = list(iter_inputs([str(listing)]))

    runs = str(listing.parent)
    assert [i.source for i in items] == [
        os.path.join(runs, "../imgs/a.png"),
        os.path.join(runs, "../imgs/missing.png"),
        str(absolute),
        os.path.join(runs, "../imgs/more", "m.png"),
        os.path.join(runs, "../imgs/g1.png"),
        "http://example.invalid/x.png",
    ]
    assert items[0].read is not None and items[0].read() == a.read_bytes()
    assert Path(items[0].path or "").resolve() == a
    assert _err(items[1]) == "no such file or directory"
    assert items[2].read is not None and items[2].path == absolute
    assert _err(items[5]) == "URL inputs are off; pass --allow-urls to fetch them"


def test_bad_lists(tmp_path: Path) -> None:
    empty = tmp_path / "empty.lst"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    loop = tmp_path / "loop.txt"
    loop.write_text("loop.txt\n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok.png\ncaf\xe9.png\n")
    _write(tmp_path / "ok.png", _png())

    items = list(iter_inputs([str(empty), str(loop), str(latin)]))

    assert [i.source for i in items] == [str(empty), str(loop), str(tmp_path / "ok.png"), f"{latin}:2"]
    assert _err(items[0]) == "list is empty"
    assert _err(items[1]) == "list includes itself"
    assert _err(items[3]) == "list is not UTF-8 text"


# --- CSV and Parquet manifests -------------------------------------------------------


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fp:
        writer = csv.writer(fp)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_manifest_with_a_path_column(tmp_path: Path) -> None:
    a = _write(tmp_path / "data" / "img" / "a.png", _png(1))
    (tmp_path / "data" / "img" / "folder").mkdir()
    manifest = _csv(tmp_path / "data" / "manifest.csv", ["id", "Path", "caption"], [
        ["1", "img/a.png", "a cat, on a mat"],
        ["2", "img/missing.png", ""],
        ["3", "", "no path"],
        ["4", "img/folder", "x"],
    ])

    items = list(iter_inputs([str(manifest)]))

    folder = str(manifest.parent)
    assert [i.source for i in items] == [os.path.join(folder, "img/a.png"), os.path.join(folder, "img/missing.png"),
                                        f"{manifest}:4", os.path.join(folder, "img/folder")]
    assert items[0].read is not None and items[0].read() == a.read_bytes()
    assert items[0].caption == "a cat, on a mat" and items[0].path == Path(folder, "img/a.png")
    assert items[1].caption is None
    assert _read_err(items[1]) == "no such file"
    assert _err(items[2]) == "empty 'Path' cell"
    assert _read_err(items[3]) == "is a directory"


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """Serve a folder of tmp_path on 127.0.0.1; yields (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    with serve_folder(root, monkeypatch) as base:
        yield base, root


def test_csv_manifest_with_urls(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, served = http_root
    pic = _write(served / "pic.png", _png(7))
    manifest = _csv(tmp_path / "urls.csv", ["key", "IMAGE_URL", "text"], [
        ["0", f"{base}/pic.png", "served"],
        ["1", f"{base}/gone.png", ""],
        ["2", "ftp://example.invalid/x.png", ""],
    ])

    refused = list(iter_inputs([str(manifest)]))
    assert [i.source for i in refused] == [f"{base}/pic.png", f"{base}/gone.png", "ftp://example.invalid/x.png"]
    assert [_err(i) for i in refused[:2]] == ["URL inputs are off; pass --allow-urls to fetch them"] * 2
    assert _err(refused[2]) == "unsupported URL scheme ftp:// (only http:// and https:// are fetched)"

    fetched = list(iter_inputs([str(manifest)], allow_urls=True))
    assert fetched[0].read is not None and fetched[0].read() == pic.read_bytes()
    assert fetched[0].caption == "served" and fetched[0].path is None
    assert _read_err(fetched[1]).startswith("download failed: HTTP 404")
    assert _err(fetched[2]).startswith("unsupported URL scheme ftp://")


def test_manifest_columns(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _png())
    manifest = _csv(tmp_path / "m.csv", ["key", "where", "caption"], [["0", "a.png", "hi"]])

    (missing,) = iter_inputs([str(manifest)], column="nope")
    assert _err(missing) == "no column 'nope' (columns: 'key', 'where', 'caption')"
    (unknown,) = iter_inputs([str(manifest)])
    assert _err(unknown) == "no path or URL column (columns: 'key', 'where', 'caption'); pick one with --column"
    (named,) = iter_inputs([str(manifest)], column="WHERE")
    assert named.source == str(tmp_path / "a.png") and named.caption == "hi"

    header_only = _csv(tmp_path / "h.csv", ["path"], [])
    (nothing,) = iter_inputs([str(header_only)])
    assert _err(nothing) == "manifest has no rows"


def test_parquet_manifest_is_read_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = 10_000
    table = pa.table({"id": list(range(rows)),
                      "file_name": [f"img/{i:05d}.png" for i in range(rows)],
                      "caption": [f"caption {i}" for i in range(rows)]})
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(table, manifest, row_group_size=1000)
    _write(tmp_path / "img" / "00000.png", _png())

    batches_read: list[int] = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def counting(self: object, *args: object, **kwargs: object) -> Iterator[object]:
        assert kwargs.get("columns") == ["file_name", "caption"]  # only the columns it needs
        for batch in real_iter_batches(self, *args, **kwargs):
            batches_read.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    monkeypatch.setattr(inputs_module, "PARQUET_BATCH_ROWS", 100)

    stream = iter_inputs([str(manifest)])
    first = list(itertools.islice(stream, 5))
    assert batches_read == [100]  # one small batch of 10,000 rows
    assert [i.source for i in first] == [str(tmp_path / f"img/{i:05d}.png") for i in range(5)]
    assert first[0].read is not None and first[0].read() == (tmp_path / "img" / "00000.png").read_bytes()
    assert first[3].caption == "caption 3"
    stream.close()

    batches_read.clear()
    count = sum(1 for _ in iter_inputs([str(manifest)]))
    assert count == rows and len(batches_read) == rows // 100


def test_parquet_needs_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _write(tmp_path / "m.parquet", b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(Image2PromptError, match="pip install pyarrow"):
        list(iter_inputs([str(manifest)]))


def test_broken_parquet_is_an_error_item(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    manifest = _write(tmp_path / "m.parquet", b"not parquet at all")
    (item,) = iter_inputs([str(manifest)])
    assert _err(item).startswith("cannot read Parquet file (")


# --- WebDataset shards -------------------------------------------------------------------


class _Trap:
    """Unpickling this creates a folder: proof that a member was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _shard(path: Path, samples: int, *, start: int = 0, trap: Path | None = None) -> dict[str, bytes]:
    """An img2dataset-style shard (members sorted by extension within a sample); returns its images."""
    images: dict[str, bytes] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for k in range(start, start + samples):
            key = f"{k:09d}"
            images[f"{key}.jpg"] = _png(k, (64, 48)) + bytes(4000)  # big enough to span blocks
            add(f"{key}.jpg", images[f"{key}.jpg"])
            add(f"{key}.json", b'{"url": "http://example.invalid", "status": "success"}')
            add(f"{key}.txt", f"caption {k}\n".encode())
        if trap is not None:
            add("extra.pickle", pickle.dumps(_Trap(trap)))
        add("README.md", b"not an image")
    return images


def test_webdataset_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "unpickled"
    shard = tmp_path / "shards" / "00000.tar"
    images = _shard(shard, 3, trap=marker)
    watched_tmp = tmp_path / "tmpdir"
    watched_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(watched_tmp))
    before = _snapshot(tmp_path)

    items = list(iter_inputs([str(shard)]))
    data = [i.read() for i in items if i.read is not None]

    assert [i.source for i in items] == [f"{shard}/{name}" for name in images]
    assert data == list(images.values())
    assert [i.caption for i in items] == ["caption 0", "caption 1", "caption 2"]
    assert all(i.path is None for i in items)
    assert _snapshot(tmp_path) == before  # nothing extracted, nothing written, nothing unpickled
    assert not marker.exists()

    # A member's source name (as a failure list holds it) reads that member back.
    (again,) = iter_inputs([f"{shard}/000000001.jpg"])
    assert again.read is not None and again.read() == images["000000001.jpg"]
    (absent,) = iter_inputs([f"{shard}/123.jpg"])
    assert _read_err(absent) == f"no member 123.jpg in {shard}"


def test_truncated_shard_keeps_the_items_before_the_damage(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tar"
    images = _shard(whole, 3)
    data = whole.read_bytes()
    third = data.index(images["000000002.jpg"][:64])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: third + 100])  # inside the third image's data

    items = list(iter_inputs([str(cut)]))

    assert [i.source for i in items] == [f"{cut}/000000000.jpg", f"{cut}/000000001.jpg", str(cut)]
    assert [i.read() for i in items[:2] if i.read is not None] == [images["000000000.jpg"], images["000000001.jpg"]]
    assert [i.caption for i in items[:2]] == ["caption 0", "caption 1"]
    assert _err(items[2]).startswith("damaged shard after 2 images (")

    # Cut between members (no end-of-archive marker): tarfile alone would stop quietly.
    boundary = data.index(images["000000002.jpg"][:64]) - 512
    cut.write_bytes(data[:boundary])
    items = list(iter_inputs([str(cut)]))
    assert len(items) == 3
    assert _err(items[2]) == "damaged shard after 2 images (truncated: no end-of-archive marker)"


def test_bad_shards(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.tar", b"")
    junk = _write(tmp_path / "junk.tar", b"junk" * 300)
    no_images = tmp_path / "meta.tar"
    with tarfile.open(no_images, "w") as tf:
        for name in ("a.json", "b.json", "c.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))

    items = list(iter_inputs([str(empty), str(junk), str(no_images)]))

    assert [_err(i) for i in items] == [
        "empty file", "not a tar file (invalid header)", "shard contains no images (found 2 files: .json)"]


def test_shard_globs_and_brace_ranges(tmp_path: Path) -> None:
    first = _shard(tmp_path / "data" / "00000.tar", 2, start=0)
    second = _shard(tmp_path / "data" / "00001.tar", 1, start=2)

    by_glob = list(iter_inputs([str(tmp_path / "data" / "*.tar")]))
    assert [i.read() for i in by_glob if i.read is not None] == [*first.values(), *second.values()]

    by_range = list(iter_inputs([str(tmp_path / "data" / "{00000..00002}.tar")]))
    assert [i.source for i in by_range] == [
        str(tmp_path / "data" / "00000.tar" / "000000000.jpg"),
        str(tmp_path / "data" / "00000.tar" / "000000001.jpg"),
        str(tmp_path / "data" / "00001.tar" / "000000002.jpg"),
        str(tmp_path / "data" / "00002.tar"),
    ]
    assert _err(by_range[-1]) == "no such file or directory"


def test_a_manifest_row_named_as_a_failure_list_holds_it_is_read_again(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_path,caption\na.png,first\n,second\nmissing.png,third\n", encoding="utf-8")
    listed = tmp_path / "out.jsonl.failed.txt"
    listed.write_text("m.csv:3\nm.csv:4\nm.csv:2\nm.csv:9\n", encoding="utf-8")
    items = list(iter_inputs([str(listed)]))
    empty, missing, good, beyond = items
    assert empty.source == f"{manifest}:3" and str(empty.error) == f"{manifest}:3: empty 'image_path' cell"
    assert missing.source == str(tmp_path / "missing.png") and missing.origin == f"{manifest}:4"
    assert good.source == str(tmp_path / "a.png") and good.caption == "first" and good.read is not None
    assert good.origin == f"{manifest}:2" and good.read()[:4] == b"\x89PNG"
    assert str(beyond.error) == f"{manifest}:9: no such row in {manifest}"
