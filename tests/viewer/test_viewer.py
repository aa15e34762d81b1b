"""The web viewer in headless Chromium: it draws, it orbits, it matches render_mpi, it falls back.

Numerics: the WebGL canvas is read back with gl.readPixels (``gmpiViewer.readPixels``) at fixed poses and
compared with ``render_mpi`` of the very 8-bit textures the browser loaded (``load_mpi_export`` of the
same folder), its output quantised like the GPU's (round to nearest). The canvas is 384 × 256 device
pixels (192 × 128 CSS px at devicePixelRatio 2): the viewer fits the square view to the shorter side, so
its central 256² pixels are the 256² render — which also checks the non-square and devicePixelRatio
handling.
"""

from __future__ import annotations

import base64
import io
import math
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.viewer.conftest import MODEL_ID, Export, Server

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
