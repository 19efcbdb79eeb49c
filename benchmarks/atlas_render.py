"""Benchmark atlas.html in headless Chromium: file size, time to first render, pan frames.

Writes fake run folders (tests/atlas/fake_run.py) of 10^5 and 10^6 particles,
writes their atlas.html (deflated and plain), opens each in headless Chromium
(playwright driving /usr/bin/chromium; WebGL runs on SwiftShader, a CPU renderer,
as on a machine without a GPU) and measures:

* the file size and the time Python takes to write it;
* the time to first render: navigation start until the first frame is drawn and
  read back (``performance.now()`` in the page), and the wall time seen from Python;
* the time of one pan frame, drawn synchronously (draw + 1-pixel read-back), for
  all points and for the subset the page draws while dragging, and the median
  interval between animation frames while panning.

With ``--compare`` it also draws the same 10^6 points with other approaches (a
Canvas 2D pixel splat, plain WebGL points and, given ``--plotly PATH`` to a local
plotly.min.js, Plotly's scattergl) to back the choice of renderer.

Results go to benchmarks/results/atlas_render.json and .md.

Usage::

    python benchmarks/atlas_render.py [--sizes 100000 1000000] [--compare] [--plotly plotly.min.js]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryomanifold.atlas import write_atlas_html

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
log = logging.getLogger("atlas_render")


def _fake_run_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cm_fake_run", ROOT / "tests" / "atlas" / "fake_run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _open(browser: Any, path: Path) -> tuple[Any, Any, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(path.as_uri(), timeout=300_000)
    page.wait_for_function(
        "window.cmAtlas && (window.cmAtlas.ready || window.cmAtlas.error)", timeout=300_000
    )
    wall = time.perf_counter() - t0
    err = page.evaluate("window.cmAtlas.error")
    if err or errors:
        raise RuntimeError(f"{path}: {err or errors}")
    return context, page, wall


def measure_atlas(browser: Any, path: Path, *, frames: int) -> dict[str, Any]:
    """Load an atlas page and time it."""
    context, page, wall = _open(browser, path)
    try:
        out: dict[str, Any] = {
            "file_mb": path.stat().st_size / 1e6,
            "load_wall_s": wall,
            "first_render_ms": page.evaluate("window.cmAtlas.firstFrameMs"),
            "timings_ms": page.evaluate("window.cmAtlas.timings"),
            "pan_full_ms": page.evaluate(f"window.cmAtlas.benchPan({frames}, false)"),
            "pan_interactive_ms": page.evaluate(f"window.cmAtlas.benchPan({frames}, true)"),
            "pan_raf_ms": page.evaluate(f"window.cmAtlas.benchPanRaf({frames})"),
            "interactive_points": page.evaluate("window.cmAtlas.lodPoints()"),
            "js_heap_mb": page.evaluate(
                "performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null"
            ),
        }
    finally:
        context.close()
    return out


_COMPARE_PAGE = """<!DOCTYPE html><html><body style="margin:0">
<div id="plot" style="width:1000px;height:760px;position:relative"></div>
<script id="pts" type="application/octet-stream">__PTS__</script>
__LIB__
<script>
const b = atob(document.getElementById('pts').textContent);
const u8 = new Uint8Array(b.length); for (let i = 0; i < b.length; i++) u8[i] = b.charCodeAt(i);
const P = new Uint16Array(u8.buffer), N = P.length / 2, W = 1000, H = 760;
const med = (t) => { t.sort((a, b) => a - b); return t[t.length >> 1]; };
window.runners = {
  canvas2d_splat(frames) {   // CPU: write pixels into an ImageData, blend by hand
    const c = document.createElement('canvas'); c.width = W; c.height = H;
    document.getElementById('plot').appendChild(c);
    const ctx = c.getContext('2d'); const img = ctx.createImageData(W, H);
    const px = new Uint32Array(img.data.buffer); const t = [];
    for (let f = 0; f < frames + 1; f++) {
      const t0 = performance.now(); px.fill(0xffffffff); const dx = f % 10;
      for (let i = 0; i < N; i++) {
        const x = ((P[2*i] * (W - 20)) >>> 16) + dx, y = H - 1 - ((P[2*i+1] * (H - 20)) >>> 16);
        px[y * W + x] = 0xff994411;
      }
      ctx.putImageData(img, 0, 0); ctx.getImageData(0, 0, 1, 1); t.push(performance.now() - t0);
    }
    return {first_ms: t[0], frame_ms: med(t.slice(1))};
  },
  canvas2d_fillrect(frames) {  // the naive Canvas 2D way: one fillRect per point
    const c = document.createElement('canvas'); c.width = W; c.height = H;
    document.getElementById('plot').appendChild(c);
    const ctx = c.getContext('2d'); ctx.fillStyle = 'rgba(17,68,153,0.7)'; const t = [];
    for (let f = 0; f < Math.min(frames, 3) + 1; f++) {
      const t0 = performance.now(); ctx.clearRect(0, 0, W, H);
      for (let i = 0; i < N; i++) {
        ctx.fillRect(P[2*i] / 65535 * (W - 20) + f, H - P[2*i+1] / 65535 * (H - 20), 1, 1);
      }
      ctx.getImageData(0, 0, 1, 1); t.push(performance.now() - t0);
    }
    return {first_ms: t[0], frame_ms: med(t.slice(1))};
  },
  async plotly_scattergl(frames) {
    const x = new Float32Array(N), y = new Float32Array(N);
    for (let i = 0; i < N; i++) { x[i] = P[2*i]; y[i] = P[2*i+1]; }
    const el = document.getElementById('plot');
    const t0 = performance.now();
    await Plotly.newPlot(el, [{type: 'scattergl', mode: 'markers', x, y, marker: {size: 2}}],
      {width: W, height: H, xaxis: {range: [0, 65535]}, yaxis: {range: [0, 65535]}});
    await new Promise((r) => requestAnimationFrame(() => r()));
    const first = performance.now() - t0, t = [];
    for (let f = 0; f < frames; f++) {
      const t1 = performance.now();
      await Plotly.relayout(el, {'xaxis.range': [f * 50, 65535 + f * 50]});
      await new Promise((r) => requestAnimationFrame(() => r()));
      t.push(performance.now() - t1);
    }
    return {first_ms: first, frame_ms: med(t)};
  },
};
</script></body></html>"""


def measure_renderers(
    browser: Any, embedding: np.ndarray, workdir: Path, *, frames: int, plotly: Path | None
) -> dict[str, Any]:
    """Draw the same points with other approaches (no interaction code, just drawing)."""
    from cryomanifold.atlas.encode import quantize_positions

    pos, _ = quantize_positions(embedding)
    pts = base64.b64encode(pos.astype("<u2").tobytes()).decode("ascii")
    lib = ""
    if plotly is not None:
        lib = "<script>" + plotly.read_text(encoding="utf-8") + "</script>"
    page_path = workdir / "compare.html"
    page_path.write_text(
        _COMPARE_PAGE.replace("__PTS__", pts).replace("__LIB__", lib), encoding="utf-8"
    )
    results: dict[str, Any] = {}
    names = ["canvas2d_splat", "canvas2d_fillrect"] + (["plotly_scattergl"] if plotly else [])
    for name in names:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        try:
            page.goto(page_path.as_uri(), timeout=300_000)
            results[name] = page.evaluate(f"window.runners.{name}({frames})")
        except Exception as exc:  # record, do not abort the benchmark
            results[name] = {"error": str(exc)[:300]}
        finally:
            context.close()
        log.info("renderer %s: %s", name, results[name])
    if plotly is not None:
        results["plotly_scattergl"]["library_kb"] = plotly.stat().st_size / 1e3
    return results


def _table(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# atlas.html render benchmark",
        "",
        f"Headless Chromium {env['chromium']} on {env['renderer']}, {env['cpus']} CPU cores "
        f"({env['machine']}); viewport 1280×800. Times in ms unless stated. "
        "'full' = one pan frame with every point, drawn and read back synchronously; "
        "'interactive' = the same for the subset drawn while dragging; "
        "'rAF' = median interval between animation frames while panning.",
        "",
        "| particles | compressed | file MB | write s | first render ms | load wall s "
        "| pan full | pan interactive (points) | pan rAF | JS heap MB |",
        "|---:|:--:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["atlas"]:
        lines.append(
            f"| {row['n']:,} | {'yes' if row['compress'] else 'no'} | {row['file_mb']:.1f} "
            f"| {row['write_s']:.1f} | {row['first_render_ms']:.0f} | {row['load_wall_s']:.1f} "
            f"| {row['pan_full_ms']['median']:.0f} "
            f"| {row['pan_interactive_ms']['median']:.0f} ({row['interactive_points']:,}) "
            f"| {row['pan_raf_ms']['median']:.0f} "
            f"| {row['js_heap_mb'] or float('nan'):.0f} |"
        )
    if results.get("renderers"):
        n = results["renderers_n"]
        lines += [
            "",
            f"## Other renderers, {n:,} points (drawing only)",
            "",
            "| approach | first frame ms | pan frame ms | note |",
            "|---|---:|---:|---|",
        ]
        for name, r in results["renderers"].items():
            if "error" in r:
                lines.append(f"| {name} | - | - | failed: {r['error'][:80]} |")
                continue
            note = f"library {r['library_kb']:.0f} kB" if "library_kb" in r else ""
            lines.append(f"| {name} | {r['first_ms']:.0f} | {r['frame_ms']:.0f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--frames", type=int, default=20, help="pan frames to time")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument(
        "--chromium", default=os.environ.get("CRYOMANIFOLD_CHROMIUM", "/usr/bin/chromium")
    )
    p.add_argument(
        "--compare", action="store_true", help="also time other renderers on the largest size"
    )
    p.add_argument(
        "--plotly", type=Path, default=None, help="a local plotly.min.js to include in --compare"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from playwright.sync_api import sync_playwright

    fake = _fake_run_module()
    results: dict[str, Any] = {"atlas": []}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        probe = browser.new_page()
        renderer = probe.evaluate("""() => { const gl = document.createElement('canvas')
            .getContext('webgl'); if (!gl) return 'no WebGL';
            const e = gl.getExtension('WEBGL_debug_renderer_info');
            return gl.getParameter(e ? e.UNMASKED_RENDERER_WEBGL : gl.RENDERER); }""")
        probe.close()
        results["environment"] = {
            "chromium": browser.version,
            "renderer": renderer,
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}",
            "python": sys.version.split()[0],
        }
        embedding = None
        for n in args.sizes:
            run_dir = Path(tmp) / f"run_{n}"
            made = fake.write_fake_run(
                run_dir,
                n_particles=n,
                n_classes=40,
                box_size=64,
                examples_per_class=6,
                junk_classes=(3, 17),
                random_state=0,
            )
            embedding = made["embedding"]
            for compress in (True, False):
                t0 = time.perf_counter()
                html = write_atlas_html(
                    run_dir, run_dir / f"atlas_{compress}.html", compress=compress
                )
                write_s = time.perf_counter() - t0
                row = {
                    "n": n,
                    "compress": compress,
                    "write_s": write_s,
                    **measure_atlas(browser, html, frames=args.frames),
                }
                log.info(
                    "n=%d compress=%s: %.1f MB, first render %.0f ms, pan full %.0f ms, "
                    "interactive %.0f ms",
                    n,
                    compress,
                    row["file_mb"],
                    row["first_render_ms"],
                    row["pan_full_ms"]["median"],
                    row["pan_interactive_ms"]["median"],
                )
                results["atlas"].append(row)
        if args.compare and embedding is not None:
            results["renderers_n"] = len(embedding)
            results["renderers"] = measure_renderers(
                browser, embedding, Path(tmp), frames=args.frames, plotly=args.plotly
            )
        browser.close()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "atlas_render.json").write_text(json.dumps(results, indent=2))
    (args.out / "atlas_render.md").write_text(_table(results))
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
