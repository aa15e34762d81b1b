"""The web viewer in headless Chromium: it draws, it orbits, it matches render_mpi, it falls back.

Numerics: the WebGL canvas is read back with gl.readPixels (``gmpiViewer.readPixels``) at fixed poses and
compared with ``render_mpi`` of the very 8-bit textures the browser loaded (``load_mpi_export`` of the
same folder), its output quantised like the GPU's (round to nearest). The canvas is 384 × 256 device
pixels (192 × 128 CSS px at devicePixelRatio 2): the viewer draws the square view in the largest centred
square, so its central 256² pixels are the 256² render — which also checks the devicePixelRatio handling.

Most tests use the stand-in server of conftest.py (fast, and it fakes what a real gateway cannot); the
last ones open the real gateway at ``/`` as a newcomer does: its assets, its demo model, its API key, and
the square view in a wide window.
"""

from __future__ import annotations

import base64
import io
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from gmpi_core.render.export import load_mpi_export
from tests.viewer.conftest import MODEL_ID, Export, Gateway, Server

# Measured on SwiftShader (Chromium 156, WebGL2 half-float accumulation): mean 0.03-0.04/255, p99 1/255,
# max 1/255 — float32 vs half-float rounding before the one final 8-bit quantisation. Blending in the 8-bit
# canvas (WebGL1, one rounding per plane) measured mean 0.09-0.14/255, p99 1/255, max 3/255. Convention
# errors, measured the same way: a half-texel shift mean 1.2/255, max 31/255; a hard plane edge instead of
# zero-padded sampling max 28/255; focal from the width of the 3:2 canvas mean 8/255; premultiplied
# textures (createImageBitmap's default) mean 30/255. The bounds leave GPUs with 8-bit sub-texel filter
# weights (≤ 0.5/255 per sample) room while failing every one of those errors.
MEAN_ABS_MAX = 0.5 / 255
P99_ABS_MAX = 2 / 255
MAX_ABS_MAX = 8 / 255
# SwiftShader needs ~1 s per frame for a 660 × 560 canvas: the tests use small stages
SMALL_STAGE = (256, 192)
CANVAS_CSS = (192, 128)
DPR = 2
RENDER_SIZE = CANVAS_CSS[1] * DPR


def _stage_css(width: int, height: int) -> str:
    return f".stage {{ flex: none; width: {width}px; height: {height}px; }}"


def _open(
    browser: Any,
    url: str,
    *,
    dpr: int = 1,
    stage: tuple[int, int] = SMALL_STAGE,
    webgl: int = 2,
    api_key: str | None = None,
) -> Any:
    """A fresh context and page on ``url`` with a fixed stage size (CSS px), once the MPI is loaded."""
    context = browser.new_context(viewport={"width": 900, "height": 600}, device_scale_factor=dpr)
    # the stage size is set before the first frame: a full-page canvas costs SwiftShader ~1 s per frame
    context.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => {"
        f"  const s = document.createElement('style'); s.textContent = {_stage_css(*stage)!r};"
        "  document.head.append(s); });"
    )
    if api_key:  # as if typed into the API key field on an earlier visit
        context.add_init_script(f"localStorage.setItem('gmpi.apiKey', {api_key!r})")
    if webgl < 2:  # a browser without WebGL2 (or without any WebGL, as on a blocklisted GPU)
        refused = "/webgl/" if webgl == 0 else "/^webgl2$/"
        context.add_init_script(
            f"""(() => {{
                 const original = HTMLCanvasElement.prototype.getContext;
                 HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {{
                   return {refused}.test(kind) ? null : original.call(this, kind, ...rest);
                 }};
               }})();"""
        )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("window.gmpiViewer && ['ready', 'error'].includes(window.gmpiViewer.status)")
    assert page.evaluate("gmpiViewer.status") == "ready", page.evaluate("gmpiViewer.lastError")
    assert not errors, errors
    if webgl:
        page.wait_for_function(
            "([w, h]) => document.getElementById('canvas').width === w"
            " && document.getElementById('canvas').height === h",
            arg=[stage[0] * dpr, stage[1] * dpr],
        )
    return page


def _read_canvas(page: Any, yaw: float, pitch: float) -> np.ndarray:
    """The WebGL image at a pose: uint8 [H, W, 3] from gl.readPixels."""
    page.evaluate("([y, p]) => gmpiViewer.setPose(y, p)", [yaw, pitch])
    out = page.evaluate("gmpiViewer.readPixels()")
    data = np.frombuffer(base64.b64decode(out["base64"]), np.uint8)
    return data.reshape(out["height"], out["width"], 4)[..., :3]


def _screenshot(page: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("#canvas").screenshot())).convert("RGB"))


def _poses(export: Export) -> list[tuple[float, float]]:
    """The canonical pose and two off-centre ones inside the prior (opposite corners of the range)."""
    cam = export.manifest["camera"]
    (y0, y1), (p0, p1) = cam["yaw_range"], cam["pitch_range"]
    return [(0.0, 0.0), (0.8 * y1, 0.7 * p0), (0.9 * y0, 0.9 * p1)]


def test_canvas_is_not_blank(browser: Any, server: Server) -> None:
    page = _open(browser, f"{server.url}/?mpi=/exports/planes/mpi.json")
    image = _screenshot(page)
    assert (image.max(-1) > 8).mean() > 0.2, "most of the canvas is black"
    assert image.reshape(-1, 3).std(0).min() > 5, "the canvas is a flat colour"
    page.context.close()


def test_dragging_orbits_and_changes_the_image(browser: Any, server: Server) -> None:
    page = _open(browser, f"{server.url}/?mpi=/exports/planes/mpi.json")
    before = _screenshot(page)
    box = page.locator("#stage").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + box["width"] / 4, cy - box["height"] / 8, steps=5)
    page.mouse.up()
    pose = page.evaluate("gmpiViewer.getPose()")
    assert pose["yaw"] < 0 and pose["pitch"] < 0, pose  # right drag: camera to the left; up drag: camera down
    page.wait_for_timeout(100)  # the draw happens on the next animation frame
    after = _screenshot(page)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 1, "the image did not change"
    # a drag far beyond the stage stops at the pose prior's bounds
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 10 * box["width"], cy + 10 * box["height"], steps=3)
    page.mouse.up()
    cam = page.evaluate("gmpiViewer.manifest.camera")
    pose = page.evaluate("gmpiViewer.getPose()")
    assert math.isclose(pose["yaw"], cam["yaw_range"][1])
    assert math.isclose(pose["pitch"], cam["pitch_range"][1])
    page.context.close()


@pytest.mark.parametrize(
    ("layout", "mpi_url", "webgl"),
    [
        ("planes", "/exports/planes/mpi.json", 2),
        ("atlas", "/exports/atlas/", 2),  # a folder URL works too
        ("planes", "/exports/planes/mpi.json", 1),  # WebGL1: blending in the 8-bit canvas
    ],
    ids=["webgl2-planes", "webgl2-atlas-folder-url", "webgl1-planes"],
)
def test_webgl_matches_render_mpi(
    browser: Any, server: Server, layout: str, mpi_url: str, webgl: int
) -> None:
    export = server.exports[layout]
    page = _open(browser, f"{server.url}/?mpi={mpi_url}", dpr=DPR, stage=CANVAS_CSS, webgl=webgl)
    assert page.evaluate("gmpiViewer.webglVersion") == webgl
    margin = (CANVAS_CSS[0] - CANVAS_CSS[1]) * DPR // 2
    for yaw, pitch in _poses(export):
        canvas = _read_canvas(page, yaw, pitch)
        assert canvas.shape == (RENDER_SIZE, CANVAS_CSS[0] * DPR, 3)
        square = canvas[:, margin : margin + RENDER_SIZE].astype(np.float64) / 255
        reference = export.render(yaw, pitch, RENDER_SIZE).astype(np.float64) / 255
        error = np.abs(square - reference)
        mean, p99, worst = error.mean(), np.quantile(error, 0.99), error.max()
        print(
            f"WebGL{webgl} {layout} yaw={yaw:+.3f} pitch={pitch:+.3f}: mean {mean * 255:.3f}/255, "
            f"p99 {p99 * 255:.2f}/255, max {worst * 255:.0f}/255"
        )
        assert mean < MEAN_ABS_MAX and p99 <= P99_ABS_MAX and worst <= MAX_ABS_MAX, (yaw, pitch)
    page.context.close()


def _server_image(page: Any) -> bytes:
    """The bytes behind the fallback <img> (its blob: URL), once it shows a loaded image."""
    page.wait_for_function(
        "() => { const i = document.getElementById('server-image'); return i.complete && i.naturalWidth > 0 "
        "&& i.src.startsWith('blob:') && getComputedStyle(i).display !== 'none'; }"
    )
    data = page.evaluate(
        """async () => {
             const blob = await (await fetch(document.getElementById('server-image').src)).blob();
             const bytes = new Uint8Array(await blob.arrayBuffer());
             let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s);
           }"""
    )
    return base64.b64decode(data)


def _wait_for_render_request(server: Server, count: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while len(server.renders) < count:
        assert time.monotonic() < deadline, "no server render request"
        time.sleep(0.02)
    return server.renders[-1]


def test_server_fallback_without_webgl(browser: Any, server: Server) -> None:
    start = len(server.renders)
    page = _open(browser, f"{server.url}/", webgl=0)
    assert page.evaluate("gmpiViewer.mode") == "server"
    first = _wait_for_render_request(server, start + 1)
    assert first["params"]["output"] == "rgb" and first["params"]["seed"] == 0
    assert _server_image(page) == first["png"]
    assert page.locator("#canvas").is_hidden()
    # orbiting asks the server for the new pose and shows its answer
    page.evaluate("gmpiViewer.setPose(0.2, 0.1)")
    page.wait_for_function("document.getElementById('server-image').dataset.pose === '0.2,0.1'")
    latest = server.renders[-1]
    assert (latest["params"]["yaw"], latest["params"]["pitch"]) == (0.2, 0.1)
    assert _server_image(page) == latest["png"]
    page.context.close()


def test_gateway_mode_toggle_jobs_and_api_key(browser: Any, server: Server) -> None:
    page = _open(browser, f"{server.url}/", api_key="test-key")
    assert page.evaluate("gmpiViewer.mode") == "webgl"
    mpi_requests = [r for r in server.requests if r["path"].startswith(f"/v1/models/{MODEL_ID}/mpi?")]
    assert mpi_requests and mpi_requests[-1]["headers"].get("X-API-Key") == "test-key"
    assert "seed=0" in mpi_requests[-1]["path"] and "planes=32" in mpi_requests[-1]["path"]
    # the jobs panel shows the gateway's jobs with their progress
    page.wait_for_function("document.querySelectorAll('#jobs .job').length === 2")
    first_job = page.locator("#jobs .job").first.inner_text().replace("\n", " ")
    assert first_job == "train · running 30 / 120 · ETA 75 s"
    # the toggle switches to server rendering and back
    start = len(server.renders)
    page.check("#server-toggle")
    render = _wait_for_render_request(server, start + 1)
    assert _server_image(page) == render["png"]
    post = next(r for r in reversed(server.requests) if r["method"] == "POST")
    assert post["headers"].get("X-API-Key") == "test-key"
    page.uncheck("#server-toggle")
    assert page.locator("#canvas").is_visible() and page.locator("#server-image").is_hidden()
    # a key typed into the field is stored and sent from then on: the change reloads the model list and
    # the jobs (wait for those requests; a jobs poll already in flight may still carry the old key)
    before = len(server.requests)
    page.fill("#api-key", "new-key")
    page.dispatch_event("#api-key", "change")
    assert page.evaluate("localStorage.getItem('gmpi.apiKey')") == "new-key"

    def reloads() -> list[dict[str, Any]]:
        return [
            r
            for r in server.requests[before:]
            if r["path"] == "/v1/models" or r["path"].startswith("/v1/models?")
        ]

    deadline = time.monotonic() + 10.0
    while not reloads():
        assert time.monotonic() < deadline, "changing the key did not reload the model list"
        time.sleep(0.02)
    assert [r["headers"].get("X-API-Key") for r in reloads()] == ["new-key"] * len(reloads())
    page.wait_for_function("gmpiViewer.status === 'ready'")
    mpi_after = [r for r in server.requests[before:] if r["path"].startswith(f"/v1/models/{MODEL_ID}/mpi?")]
    assert all(r["headers"].get("X-API-Key") == "new-key" for r in mpi_after)
    page.context.close()


# -- served by the real gateway -------------------------------------------------------------------------
# What a newcomer opens: services.gateway.app at / (python -m services gateway), the demo model published by
# python -m services init, MPIs generated by a render worker, through the real API and its API key.

WIDE_WINDOW = (1200, 600)  # CSS px at devicePixelRatio 1: the stage beside the panel is wider than tall


def _open_gateway(browser: Any, gateway: Gateway, window: tuple[int, int] = (900, 600)) -> tuple[Any, dict]:
    """The viewer at the gateway's / with its API key stored, as after typing it in; → (page, log)."""
    width, height = window
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(f"localStorage.setItem('gmpi.apiKey', {gateway.api_key!r})")
    page = context.new_page()
    log: dict[str, list[Any]] = {"errors": [], "responses": [], "failed": []}
    page.on("pageerror", lambda error: log["errors"].append(str(error)))
    page.on("requestfailed", lambda request: log["failed"].append(request.url))
    page.on(
        "response",
        lambda r: log["responses"].append((urlparse(r.url).path, r.status, r.request.resource_type)),
    )
    page.goto(f"{gateway.url}/", wait_until="load")
    return page, log


def _wait_ready(page: Any, gateway: Gateway) -> None:
    """Until the MPI is on the GPU: the first one waits for the render worker to start and generate it."""
    # module scripts run before the load event that page.goto waited for
    assert page.evaluate("typeof window.gmpiViewer") == "object", "the viewer's script did not run"
    page.wait_for_function(
        "window.gmpiViewer && ['ready', 'error'].includes(window.gmpiViewer.status)", timeout=180_000
    )
    assert page.evaluate("gmpiViewer.status") == "ready", (
        page.evaluate("gmpiViewer.lastError"),
        gateway.logs(),
    )


def test_the_gateway_serves_a_working_viewer(browser: Any, gateway: Gateway) -> None:
    page, log = _open_gateway(browser, gateway)
    # every stylesheet and script of the page, the ES modules app.js imports included, came from the gateway
    assets = {
        Path(path).name: status for path, status, kind in log["responses"] if kind in ("stylesheet", "script")
    }
    assert assets == {"style.css": 200, "app.js": 200, "api.js": 200, "viewer.js": 200}, log["responses"]
    # the stylesheet applied: the dark theme, the 17rem panel, the canvas filling the stage beside it
    styles = page.evaluate(
        """() => {
             const box = (id) => document.querySelector(id).getBoundingClientRect().toJSON();
             return { background: getComputedStyle(document.body).backgroundColor,
                      aside: box('aside'), stage: box('#stage'), canvas: box('#canvas') };
           }"""
    )
    assert styles["background"] == "rgb(21, 23, 26)", styles
    assert styles["aside"]["width"] == 17 * 14, styles  # 17rem of the 14px root font
    assert styles["canvas"] == styles["stage"], styles
    assert (styles["stage"]["right"], styles["stage"]["bottom"]) == (900, 600), styles
    # the script ran and found the gateway
    assert page.evaluate("typeof window.gmpiViewer") == "object", "the script did not run"
    assert page.evaluate("document.body.dataset.source") == "gateway"
    # the model list comes from the real API: the demo model that `python -m services init` published
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=30_000)
    options = page.evaluate("[...document.querySelectorAll('#model option')].map((o) => o.value)")
    assert "demo" in options, options
    assert ("/v1/models", 200, "fetch") in log["responses"]
    # and its MPI is drawn: generated by the render worker, its planes fetched from /v1/files with the key
    _wait_ready(page, gateway)
    assert page.evaluate("gmpiViewer.manifest.model_id") == options[0]
    image = _read_canvas(page, 0.0, 0.0)
    assert (image.max(-1) > 8).mean() > 0.2, "most of the canvas is black"
    assert not log["errors"] and not log["failed"], log
    bad = [r for r in log["responses"] if r[1] >= 400]
    assert not bad, bad
    page.context.close()


def _fetch_export(gateway: Gateway, manifest: dict[str, Any], root: Path) -> Export:
    """The export the page loaded (mpi.json and plane files, through /v1/files) as gmpi_core reads it."""
    headers = {"X-API-Key": gateway.api_key}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as client:
        files = {"mpi.json": f"/v1/files/{quote(manifest['key'] + 'mpi.json')}"}
        files.update({plane["file"]: plane["url"] for plane in manifest["planes"]})
        for name, url in files.items():
            response = client.get(url)
            assert response.status_code == 200, (url, response.text[:300])
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(response.content)
    rgba, plane_dhw, exported = load_mpi_export(root)
    return Export(root, rgba, plane_dhw, exported)


def test_the_view_stays_square_in_a_wide_window(browser: Any, gateway: Gateway, tmp_path: Path) -> None:
    """In a 1200 × 600 window the canvas is wide; the MPI is drawn, unstretched, in its largest centred
    square — exactly render_mpi's square image there — and nothing is drawn beside it."""
    page, log = _open_gateway(browser, gateway, WIDE_WINDOW)
    _wait_ready(page, gateway)
    # the canvas fills the window beside the panel and below the header: wider than tall
    box = page.evaluate(
        """() => Object.fromEntries(['#canvas', 'aside', 'header'].map((selector) => [
             selector.replace('#', ''),
             document.querySelector(selector).getBoundingClientRect().toJSON(),
           ]))"""
    )
    window_width, window_height = WIDE_WINDOW
    expected = (window_width - box["aside"]["width"], window_height - box["header"]["height"])
    assert (box["canvas"]["width"], box["canvas"]["height"]) == pytest.approx(expected, abs=0.5), box
    # ... and so is its drawing buffer (devicePixelRatio 1: one pixel per CSS px)
    height, width = _read_canvas(page, 0.0, 0.0).shape[:2]
    assert (width, height) == pytest.approx(expected, abs=1), box
    assert width > height + 100, (width, height)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2  # the largest centred square
    export = _fetch_export(gateway, page.evaluate("gmpiViewer.manifest"), tmp_path)
    for yaw, pitch in _poses(export):
        canvas = _read_canvas(page, yaw, pitch)
        outside = canvas.copy()
        outside[top : top + side, left : left + side] = 0
        drawn = np.argwhere(outside.max(-1) > 0)
        assert not len(drawn), (
            f"yaw={yaw:+.3f} pitch={pitch:+.3f}: drawn outside the {side}² square at x={left}, y={top}: "
            f"columns {drawn[:, 1].min()}…{drawn[:, 1].max()}, rows {drawn[:, 0].min()}…{drawn[:, 0].max()}"
        )
        square = canvas[top : top + side, left : left + side].astype(np.float64) / 255
        error = np.abs(square - export.render(yaw, pitch, side).astype(np.float64) / 255)
        mean, p99, worst = error.mean(), np.quantile(error, 0.99), error.max()
        print(
            f"gateway demo {width}×{height} yaw={yaw:+.3f} pitch={pitch:+.3f}: mean {mean * 255:.3f}/255, "
            f"p99 {p99 * 255:.2f}/255, max {worst * 255:.0f}/255"
        )
        assert mean < MEAN_ABS_MAX and p99 <= P99_ABS_MAX and worst <= MAX_ABS_MAX, (yaw, pitch)
    assert not log["errors"], log["errors"]
    page.context.close()
