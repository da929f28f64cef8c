"""The HTTP service on a real loopback server: routes, client-compatible shapes, limits, auth, errors."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from image2prompt import Interrogator, SearchSettings
from image2prompt.server import ServerConfig, create_app
from tests.conftest import make_images
from tests.support.gate import gate_encode
from tests.support.http import serve_folder
from tests.support.server import running_app


def png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures() -> list[bytes]:
    return [png(im) for im in make_images(8)]


def post_image(base: str, data: bytes, route: str = "/v1/interrogate", **fields) -> httpx.Response:
    return httpx.post(base + route, files={"image": ("x.png", data, "image/png")},
                      data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()},
                      timeout=120)


def chunked_json(kilobytes: int) -> Iterator[bytes]:
    """A JSON body of about ``kilobytes`` kB sent in chunks, with no Content-Length."""
    yield b'{"image": "'
    for _ in range(kilobytes):
        yield b"A" * 1000
    yield b'"}'


def assert_json_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and words in body["error"]
    assert body["detail"] == body["error"]  # FastAPI's and A1111's key, which their clients read
    assert "Traceback" not in r.text and "\n" not in body["error"]


def alone(ip: Interrogator, data: bytes, settings: SearchSettings, caption: str | None = None):
    return ip.interrogate(Image.open(io.BytesIO(data)).convert("RGB"), settings=settings, caption=caption)


# --- routes -----------------------------------------------------------------------------------


def test_health_readiness_models_and_docs(server_url, serve_interrogator):
    assert httpx.get(server_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server_url + "/readyz").json() == {"ready": True}
    models = httpx.get(server_url + "/v1/models").json()
    assert models["clip_models"] == ["local-dir:tiny-open-clip"]  # the folder's name, not its path
    assert models["caption_model"] == "local-dir:tiny-blip"
    assert models["caption_prompt"] is None  # BLIP is asked nothing; a VLM's question is shown
    assert "best" in models["modes"] and models["auth"] is False and models["limits"]["urls"] is False
    assert "swagger" in httpx.get(server_url + "/docs").text.lower()
    paths = httpx.get(server_url + "/openapi.json").json()["paths"]
    for route in ("/v1/interrogate", "/v1/analyze", "/v1/batch", "/interrogator/prompt", "/sdapi/v1/interrogate"):
        assert route in paths
    assert "multipart/form-data" in paths["/v1/interrogate"]["post"]["requestBody"]["content"]
    page = httpx.get(server_url + "/")
    assert page.status_code == 200 and "image2prompt" in page.text
    assert httpx.get(server_url + "/static/app.js").status_code == 200


def test_interrogate_multipart_and_json_match_the_library(server_url, serve_interrogator, pictures):
    settings = SearchSettings(mode="fast", negative=True)
    want = alone(serve_interrogator, pictures[0], settings)
    multipart = post_image(server_url, pictures[0], mode="fast", negative=True)
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    assert body["prompt"] == want.prompt and body["negative"]["prompt"] == want.negative.prompt
    assert body["token_budget"] == 77 and body["token_count"] == want.token_count
    assert body["fingerprint"] == serve_interrogator.fingerprint(settings.replace(score_prompt=True))
    b64 = base64.b64encode(pictures[0]).decode()
    for image in (b64, "data:image/png;base64," + b64):
        r = httpx.post(server_url + "/v1/interrogate", json={"image": image, "mode": "fast", "negative": True},
                       timeout=120)
        assert r.status_code == 200 and r.json()["prompt"] == want.prompt
    captioned = httpx.post(server_url + "/v1/interrogate",
                           json={"image": b64, "mode": "classic", "caption": "a red fox"}, timeout=120).json()
    assert captioned["caption"] == "a red fox"
    assert captioned["prompt"] == alone(serve_interrogator, pictures[0], SearchSettings(mode="classic"),
                                        "a red fox").prompt


def test_analyze_route(server_url, serve_interrogator, pictures):
    r = post_image(server_url, pictures[1], "/v1/analyze", top=3)
    assert r.status_code == 200, r.text
    body = r.json()
    want = serve_interrogator.analyze(Image.open(io.BytesIO(pictures[1])).convert("RGB"), 3)
    assert {c: [p["text"] for p in ps] for c, ps in body["categories"].items()} == \
        {c: [p.text for p in ps] for c, ps in want.categories.items()}
    assert all(p["hypothesis"] for p in body["categories"]["artists"])
    assert isinstance(body["weak_match"], bool) and body["match_strength"] == pytest.approx(want.match_strength)


def test_floor_field(server_url, serve_interrogator, pictures):
    for given, floor in (("off", None), ("1.5", 1.5)):
        r = post_image(server_url, pictures[0], mode="fast", floor=given)
        assert r.status_code == 200, r.text
        want = alone(serve_interrogator, pictures[0], SearchSettings(mode="fast", floor=floor))
        assert r.json()["prompt"] == want.prompt
        assert [p["text"] for p in r.json()["rejected"]] == [p.text for p in want.rejected]
    b64 = base64.b64encode(pictures[0]).decode()
    r = httpx.post(server_url + "/v1/interrogate", json={"image": b64, "mode": "fast", "floor": 1.5}, timeout=120)
    assert r.status_code == 200 and all(p["support"] >= 1.5 for p in r.json()["phrases"])
    default = post_image(server_url, pictures[0], mode="classic")  # no field: the library's default floor
    want = alone(serve_interrogator, pictures[0], SearchSettings(mode="classic"))
    assert default.json()["prompt"] == want.prompt and want.rejected  # the default floor kept something out
    assert [p["text"] for p in default.json()["rejected"]] == [p.text for p in want.rejected]
    assert_json_error(post_image(server_url, pictures[0], mode="fast", floor="high"), 422, "floor")


# --- routes of existing clients -------------------------------------------------------------------


def test_a1111_extension_routes(server_url, serve_interrogator, pictures):
    names = httpx.get(server_url + "/interrogator/models").json()
    assert names == ["local-dir:tiny-open-clip"]  # the names clients see (no server paths)
    b64 = base64.b64encode(pictures[2]).decode()
    floored = 0
    for mode in ("fast", "classic", "negative"):
        r = httpx.post(server_url + "/interrogator/prompt",
                       json={"image": "data:image/png;base64," + b64, "clip_model_name": names[0], "mode": mode},
                       timeout=120)
        assert r.status_code == 200 and set(r.json()) == {"prompt"}
        # the extension's routes give the reference's prompts: no relevance floor
        want = alone(serve_interrogator, pictures[2], SearchSettings.reference(mode=mode)).prompt
        assert r.json()["prompt"] == want
        floored += want != alone(serve_interrogator, pictures[2], SearchSettings(mode=mode)).prompt
    assert floored  # the floor changes some of these prompts, so the check above can tell
    caption = httpx.post(server_url + "/interrogator/prompt", json={"image": b64, "mode": "caption"}).json()
    assert caption["prompt"] == serve_interrogator.caption([Image.open(io.BytesIO(pictures[2])).convert("RGB")])[0]
    analysis = httpx.post(server_url + "/interrogator/analyze", json={"image": b64, "clip_model_name": names[0]}).json()
    assert set(analysis) == {"medium", "artist", "movement", "trending", "flavor"}
    assert all(len(v) == 5 and all(isinstance(s, float) for s in v.values()) for v in analysis.values())
    wrong = httpx.post(server_url + "/interrogator/prompt", json={"image": b64, "clip_model_name": "ViT-H-14/x"})
    assert_json_error(wrong, 422, "is not loaded")
    sd = httpx.post(server_url + "/sdapi/v1/interrogate", json={"image": b64, "model": "clip"}, timeout=120)
    assert sd.json() == {"caption": alone(serve_interrogator, pictures[2], SearchSettings.reference(mode="classic")).prompt}
    assert_json_error(httpx.post(server_url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru"}),
                      404, "Model not found")  # A1111's answer to a model it does not have


# --- bad input: real HTTP errors with a JSON body ----------------------------------------------------


def test_bad_requests_get_4xx_with_one_line_json(server_url, pictures):
    assert_json_error(post_image(server_url, b"not an image at all"), 400, "not an image")
    assert_json_error(post_image(server_url, b""), 400, "empty")
    ppm = png(make_images(1)[0], "PPM")  # Pillow decodes it, but it is not an allowed format
    assert_json_error(post_image(server_url, ppm), 415, "PPM images are not accepted")
    assert_json_error(post_image(server_url, pictures[0], mode="sideways"), 422, "unknown mode")
    assert_json_error(post_image(server_url, pictures[0], beam=0), 422, "beam")
    assert_json_error(post_image(server_url, pictures[0], colour="red"), 422, "colour")
    assert_json_error(httpx.post(server_url + "/v1/interrogate", json={"image": "%%%"}), 422, "not valid base64")
    assert_json_error(httpx.post(server_url + "/v1/interrogate", json={"mode": "fast"}), 422, "required")
    assert_json_error(httpx.post(server_url + "/v1/interrogate", content=b"{", headers={"content-type":
                                                                                         "application/json"}),
                      400, "not valid JSON")
    assert_json_error(httpx.post(server_url + "/v1/interrogate", content=b"x", headers={"content-type": "text/plain"}),
                      415, "not accepted")
    assert_json_error(httpx.post(server_url + "/interrogator/prompt", json={"mode": "best"}), 422, "image")
    assert_json_error(httpx.get(server_url + "/v1/nothing"), 404, "Not Found")
    assert_json_error(httpx.post(server_url + "/v1/interrogate", json={"url": "http://example.com/a.png"}),
                      400, "fetching URLs is off")


def noise(side: int) -> bytes:
    return png(Image.fromarray(np.random.RandomState(side).randint(0, 255, (side, side, 3), dtype=np.uint8)))


def test_size_limits(serve_interrogator, monkeypatch):
    limit = 150_000
    cfg = ServerConfig(max_upload_bytes=limit, max_pixels=300 * 300)
    huge, big = noise(320), noise(240)  # 307 kB: the body is over its limit; 173 kB: the image is
    assert len(huge) > limit * 4 // 3 + 65536 and limit < len(big) < limit * 4 // 3
    with running_app(create_app(serve_interrogator, cfg), monkeypatch) as base:
        assert_json_error(post_image(base, huge), 413, "request body of")  # from Content-Length, unread
        assert_json_error(post_image(base, big), 413, f"image of {len(big)} bytes is over the {limit}-byte limit")
        b64 = base64.b64encode(big).decode()  # base64 is a third larger: the body limit leaves room for it
        assert_json_error(httpx.post(base + "/v1/interrogate", json={"image": b64}), 413, "is over the")
        wide = png(Image.new("RGB", (400, 240), (1, 2, 3)))
        assert_json_error(post_image(base, wide), 413, "image too large (400×240 pixels")

        # no Content-Length: the body is counted as it arrives
        r = httpx.post(base + "/v1/interrogate", content=chunked_json(300), headers={"content-type": "application/json"})
        assert_json_error(r, 413, "limit")


def test_urls_are_off_by_default_and_private_addresses_refused(serve_interrogator, monkeypatch, tmp_path):
    make_images(1)[0].save(tmp_path / "a.png")
    with serve_folder(tmp_path, monkeypatch) as files, \
            running_app(create_app(serve_interrogator, ServerConfig(allow_urls=True)), monkeypatch) as base:
        r = httpx.post(base + "/v1/interrogate", json={"url": f"{files}/a.png", "mode": "fast"})
        assert_json_error(r, 400, "refused: 127.0.0.1 is not a public address")
        assert_json_error(httpx.post(base + "/v1/interrogate", json={"url": "file:///etc/passwd"}), 400,
                          "only http and https")


# --- auth, CORS, logging ---------------------------------------------------------------------------


def test_api_key_is_checked_and_cors_is_off_by_default(serve_interrogator, monkeypatch, server_url, pictures):
    r = httpx.get(server_url + "/v1/models", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    cfg = ServerConfig(api_key="s3cret", cors_origins=("https://app.example",))
    with running_app(create_app(serve_interrogator, cfg), monkeypatch) as base:
        assert httpx.get(base + "/healthz").status_code == 200 and httpx.get(base + "/").status_code == 200
        assert_json_error(httpx.get(base + "/v1/models"), 401, "API key")
        assert_json_error(httpx.get(base + "/v1/models", headers={"X-API-Key": "s3cre"}), 401, "API key")
        assert httpx.get(base + "/v1/models", headers={"X-API-Key": "s3cret"}).json()["auth"] is True
        assert httpx.get(base + "/interrogator/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert_json_error(post_image(base, pictures[0]), 401, "API key")
        ok = httpx.get(base + "/v1/models", headers={"X-API-Key": "s3cret", "Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(base + "/v1/models", headers={"X-API-Key": "s3cret", "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_one_log_line_per_request_with_latency(server_url, caplog):
    with caplog.at_level(logging.INFO, logger="image2prompt.server"):
        httpx.get(server_url + "/healthz")
        httpx.get(server_url + "/v1/nothing")
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "image2prompt.server.guard"]
    assert any(" GET /healthz 200 " in m and m.endswith("ms") for m in lines)
    assert any(" GET /v1/nothing 404 " in m for m in lines)


# --- one model, many clients -----------------------------------------------------------------------


def stats(base: str) -> dict:
    return httpx.get(base + "/v1/stats").json()


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_concurrent_clients_get_their_own_answers(serve_interrogator, pictures, monkeypatch):
    requests = [(pictures[i % len(pictures)], mode) for i, mode in
                enumerate(["fast", "classic", "negative", "fast", "best", "classic", "fast", "negative",
                           "best", "fast", "classic", "fast"])]

    def fields(mode: str) -> dict:
        return {"mode": mode, "negative": mode == "fast"} | ({"candidates": 16, "max_flavors": 4}
                                                            if mode == "best" else {})

    with running_app(create_app(serve_interrogator, ServerConfig(max_wait=0.0)), monkeypatch) as base:
        sent_alone = [post_image(base, data, **fields(mode)).json() for data, mode in requests]
        gate = gate_encode(monkeypatch, serve_interrogator)
        before = stats(base)["batches"]
        with ThreadPoolExecutor(len(requests)) as pool:
            first = pool.submit(post_image, base, requests[0][0], **fields(requests[0][1]))
            wait_for(lambda: stats(base)["batches"] == before + 1)  # the worker holds the first, at the gate
            rest = [pool.submit(post_image, base, data, **fields(mode)) for data, mode in requests[1:]]
            wait_for(lambda: stats(base)["queued"] == len(requests) - 1)
            gate.set()
            answers = [first.result().json()] + [f.result().json() for f in rest]
        after = stats(base)
    assert after["batches"] == before + 2 and after["largest_batch"] == len(requests) - 1
    for got, want, (_, mode) in zip(answers, sent_alone, requests):
        assert got["mode"] == mode
        assert got["prompt"] == want["prompt"]
        assert (got["negative"] or {}).get("prompt") == (want["negative"] or {}).get("prompt")
        assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-5)


def test_full_queue_503_timeout_504_and_disconnect_cancels(serve_interrogator, pictures, monkeypatch):
    cfg = ServerConfig(max_queue=1, max_batch=1, timeout=60, retry_after=2)
    with running_app(create_app(serve_interrogator, cfg), monkeypatch) as base:
        gate = gate_encode(monkeypatch, serve_interrogator)
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(post_image, base, pictures[0], mode="fast")
            wait_for(lambda: stats(base)["batches"] == 1)
            # a client that goes away while its request waits in the queue
            raw = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
            body = json.dumps({"image": base64.b64encode(pictures[1]).decode(), "mode": "fast"}).encode()
            raw.sendall(b"POST /v1/interrogate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: stats(base)["queued"] == 1)
            busy = post_image(base, pictures[2], mode="fast")
            assert_json_error(busy, 503, "queue is full")
            assert busy.headers["retry-after"] == "2"
            raw.close()
            time.sleep(1.0)  # the server notices the disconnect (it polls every 0.25 s) and cancels
            gate.set()
            assert held.result().status_code == 200
        wait_for(lambda: stats(base)["dropped"] == 1)
        assert stats(base)["completed"] == 1 and stats(base)["rejected"] == 1
    with running_app(create_app(serve_interrogator, ServerConfig(timeout=0.5)), monkeypatch) as base:
        gate.clear()
        slow = post_image(base, pictures[0], mode="fast")
        gate.set()
        assert_json_error(slow, 504, "no result within 0.5 s")


# --- batch uploads -------------------------------------------------------------------------------------


def test_batch_upload_with_a_zip_gives_records_and_downloads(server_url, serve_interrogator, pictures):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("set/one.png", pictures[3])
        z.writestr("set/deep/two.png", pictures[4])
        z.writestr("__MACOSX/._one.png", b"junk")
        z.writestr("set/one.txt", b"an existing caption: not an image, skipped as in a folder")
        z.writestr("../escape.png", pictures[5])
    files = [("files", ("a.png", pictures[0], "image/png")), ("files", ("broken.jpg", b"nope", "image/jpeg")),
             ("files", ("set.zip", archive.getvalue(), "application/zip"))]
    r = httpx.post(server_url + "/v1/batch", files=files, data={"mode": "fast", "prefix": "sks style"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    sources = [rec["source"] for rec in body["records"]]
    assert sources == ["a.png", "broken.jpg", "set.zip/set/one.png", "set.zip/set/deep/two.png", "set.zip/escape.png"]
    assert (body["count"], body["ok"], body["failed"]) == (5, 4, 1)
    bad = body["records"][1]
    assert bad["ok"] is False and bad["error"].startswith("broken.jpg: ") and "result" not in bad
    want = alone(serve_interrogator, pictures[3], SearchSettings(mode="fast"))
    assert body["records"][2]["result"]["prompt"] == want.prompt
    csv_text = httpx.get(server_url + body["downloads"]["csv"]).text
    assert csv_text.splitlines()[0].startswith("source,content_hash,fingerprint,ok,error,prompt")
    assert len(csv_text.splitlines()) == 6
    jsonl = [json.loads(line) for line in httpx.get(server_url + body["downloads"]["jsonl"]).text.splitlines()]
    assert jsonl == body["records"]
    captions = zipfile.ZipFile(io.BytesIO(httpx.get(server_url + body["downloads"]["zip"]).content))
    assert sorted(captions.namelist()) == ["a.txt", "set.zip/escape.txt", "set.zip/set/deep/two.txt",
                                           "set.zip/set/one.txt"]
    assert captions.read("set.zip/set/one.txt").decode() == f"sks style, {want.prompt}\n"
    assert_json_error(httpx.get(server_url + "/v1/batch/nope.csv"), 404, "no batch download")
    unknown = httpx.post(server_url + "/v1/batch", files=files[:1], data={"mode": "nope"})
    assert_json_error(unknown, 422, "unknown mode 'nope'")


def test_batch_upload_over_the_file_limit(serve_interrogator, monkeypatch, pictures):
    with running_app(create_app(serve_interrogator, ServerConfig(max_batch_files=2)), monkeypatch) as base:
        files = [("files", (f"{i}.png", pictures[i], "image/png")) for i in range(3)]
        r = httpx.post(base + "/v1/batch", files=files, data={"mode": "fast"})
        assert r.status_code in (400, 413) and "Traceback" not in r.text


def test_readyz_waits_for_loading_and_reports_a_failed_load(serve_interrogator, monkeypatch):
    release = threading.Event()

    def slow_load() -> Interrogator:
        release.wait(30)
        return serve_interrogator

    with running_app(create_app(slow_load), monkeypatch, ready=False) as base:
        assert httpx.get(base + "/readyz").status_code == 503
        assert_json_error(httpx.get(base + "/v1/models"), 503, "still loading")
        release.set()
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200)

    def broken() -> Interrogator:
        raise FileNotFoundError("no weights at /nowhere")

    errors: list[str] = []
    with running_app(create_app(broken, on_load_error=errors.append), monkeypatch, ready=False) as base:
        wait_for(lambda: bool(errors))
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and "failed to load" in r.json()["error"] and "nowhere" not in r.text
        assert_json_error(httpx.get(base + "/v1/models"), 503, "failed to load")


def test_a_bug_is_a_500_with_no_traceback(server_url, serve_interrogator, pictures, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(serve_interrogator, "analyze_features", explode)
    r = post_image(server_url, pictures[0], "/v1/analyze")
    assert_json_error(r, 500, "internal error")
    assert "secret" not in r.text


def test_path_of_static_files_is_packaged():
    from image2prompt.server.app import STATIC

    assert {p.name for p in Path(STATIC).iterdir()} >= {"index.html", "app.js", "style.css"}


def test_loopback_servers_refuse_other_hosts_and_other_sites_pages(serve_interrogator, monkeypatch, pictures):
    cfg = ServerConfig(loopback_only=True, cors_origins=("https://app.example",))
    with running_app(create_app(serve_interrogator, cfg), monkeypatch) as base:
        port = base.rsplit(":", 1)[1]
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/healthz", headers={"Host": f"localhost:{port}"}).status_code == 200
        # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1
        assert_json_error(httpx.get(base + "/v1/models", headers={"Host": f"evil.example:{port}"}), 421,
                          "localhost only")
        # a page of another site posting a form (browsers send no preflight for multipart)
        evil = httpx.post(base + "/v1/interrogate", files={"image": ("x.png", pictures[0], "image/png")},
                          headers={"Origin": "https://evil.example"})
        assert_json_error(evil, 403, "not allowed")
        same = httpx.post(base + "/v1/interrogate", files={"image": ("x.png", pictures[0], "image/png")},
                          data={"mode": "fast"}, headers={"Origin": f"http://127.0.0.1:{port}"}, timeout=120)
        allowed = httpx.post(base + "/v1/interrogate", files={"image": ("x.png", pictures[0], "image/png")},
                             data={"mode": "fast"}, headers={"Origin": "https://app.example"}, timeout=120)
        assert same.status_code == 200 and allowed.status_code == 200


def test_server_caps_settings_that_would_hold_the_worker(server_url, pictures):
    assert_json_error(post_image(server_url, pictures[0], beam=9), 422, "beam")
    assert_json_error(post_image(server_url, pictures[0], candidates=100000), 422, "candidates")


def test_a1111_bodies_over_the_limit_are_413(serve_interrogator, monkeypatch):
    with running_app(create_app(serve_interrogator, ServerConfig(max_upload_bytes=1000)), monkeypatch) as base:
        r = httpx.post(base + "/interrogator/prompt", content=chunked_json(100),
                       headers={"content-type": "application/json"})
        assert_json_error(r, 413, "limit")


def test_batch_budget_holds_across_zips_and_a_failing_model_fails_records_not_the_batch(
        serve_interrogator, monkeypatch, pictures):
    def zipped(k: int) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"big{k}.png", b"\0" * 600_000)  # compresses to almost nothing
        return buf.getvalue()

    cfg = ServerConfig(max_batch_bytes=1_000_000, max_upload_bytes=700_000)
    with running_app(create_app(serve_interrogator, cfg), monkeypatch) as base:
        files = [("files", (f"{k}.zip", zipped(k), "application/zip")) for k in range(2)]
        assert_json_error(httpx.post(base + "/v1/batch", files=files, data={"mode": "fast"}), 413,
                          "unpacks to more than the 1000000-byte limit")

        def broken(*args, **kwargs):
            raise RuntimeError("CUDA out of memory (pretend)")

        monkeypatch.setattr(serve_interrogator, "_search", broken)
        files = [("files", (f"{i}.png", pictures[i], "image/png")) for i in range(3)]
        r = httpx.post(base + "/v1/batch", files=files, data={"mode": "fast"}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["failed"] == 3 and all("internal error" in rec["error"] for rec in body["records"])
        assert "CUDA" not in r.text


def test_large_uploads_reach_the_queue_reduced_and_decode_in_bounded_slots(serve_interrogator, monkeypatch):
    """Issue 28: a decoded upload is reduced at once to what the models need (64 px for the tiny
    ones), so no waiting request holds it at full size; its decode held one of the decode slots."""
    seen: list[tuple[int, int]] = []
    real = serve_interrogator.encode

    def encode(images, *args, **kwargs):
        seen.extend(im.size for im in images)
        return real(images, *args, **kwargs)

    big = png(Image.new("L", (1600, 1200), 90))  # a few kB of PNG, 7.7 MB once decoded as RGB
    jpeg = png(make_images(1)[0].resize((1024, 768)), "JPEG")
    app = create_app(serve_interrogator, ServerConfig(decoders=2))
    with running_app(app, monkeypatch) as base:
        monkeypatch.setattr(serve_interrogator, "encode", encode)
        r = post_image(base, big, mode="fast", caption="a grey square")
        assert r.status_code == 200, r.text
        r = post_image(base, jpeg, mode="fast", caption="a picture")
        assert r.status_code == 200, r.text
        slots = app.state.i2p.decode_slots
        assert stats(base)["held_bytes"] == 0  # nothing is kept once answered
    assert seen == [(89, 67), (128, 96)]  # 1200 // 64 = 18; the JPEG decoded at 1/8 (768 // 64 = 12 -> 8)
    assert slots.n == 2 and slots.peak >= 1 and slots.active == 0


def test_batch_caption_zip_keeps_trigger_words_first_and_within_the_budget(server_url, serve_interrogator, pictures):
    """As `batch --prefix`: the trigger words stay first and count against --max-tokens."""
    trigger = "sks style " * 12  # about 25 tokens of a 40-token budget
    r = httpx.post(server_url + "/v1/batch", files=[("files", ("a.png", pictures[0], "image/png"))],
                   data={"mode": "fast", "prefix": trigger, "max_tokens": "40"}, timeout=120)
    assert r.status_code == 200, r.text
    prompt = r.json()["records"][0]["result"]["prompt"]
    assert serve_interrogator.count_tokens(f"{trigger.strip()}, {prompt}") > 38  # would not fit as it is
    captions = zipfile.ZipFile(io.BytesIO(httpx.get(server_url + r.json()["downloads"]["zip"]).content))
    line = captions.read("a.txt").decode().rstrip("\n")
    assert line.startswith(trigger.strip() + ", ")
    assert serve_interrogator.count_tokens(line) <= 38


def test_the_queue_byte_budget_reaches_the_batcher(serve_interrogator, monkeypatch):
    from click.testing import CliRunner

    from image2prompt.cli.main import cli

    with running_app(create_app(serve_interrogator, ServerConfig(max_queue_bytes=3 * 1024 * 1024)), monkeypatch) \
            as base:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200)
        assert httpx.get(base + "/v1/stats").json()["max_queue_bytes"] == 3 * 1024 * 1024
    assert "--max-queue-mb" in CliRunner().invoke(cli, ["serve", "--help"]).output
