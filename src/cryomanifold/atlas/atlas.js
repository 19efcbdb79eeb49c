/* cryomanifold atlas: a WebGL scatter of a run's embedding with a class gallery.
 *
 * No dependencies and no network: the page embeds this script, a JSON description
 * (#cm-meta) and the data as base64 typed arrays (#cm-data, optionally deflated).
 * WebGL 1 draws the points as GL_POINTS from compact attributes (uint16 positions,
 * the colour value, the class and a selection flag), so pan and zoom only change
 * uniforms. A uniform grid over the points answers hover queries; box and lasso
 * selections are rasterised to a mask. window.cmAtlas exposes a small API that
 * the tests and benchmarks use.
 */
(function () {
  "use strict";

  const api = { ready: false, error: null, timings: {} };
  window.cmAtlas = api;
  const $ = (id) => document.getElementById(id);
  const T0 = performance.now();

  // viridis, 16 samples
  const RAMP = [0.267, 0.005, 0.329, 0.283, 0.100, 0.422, 0.277, 0.185, 0.490, 0.254, 0.265, 0.530,
    0.222, 0.339, 0.549, 0.191, 0.407, 0.556, 0.164, 0.471, 0.558, 0.139, 0.534, 0.555, 0.121, 0.596,
    0.544, 0.135, 0.659, 0.518, 0.208, 0.719, 0.473, 0.328, 0.774, 0.407, 0.478, 0.821, 0.318, 0.647,
    0.858, 0.210, 0.825, 0.885, 0.106, 0.993, 0.906, 0.144];
  const N_PAL = 64;

  function hsl(h, s, l) {
    const f = (k) => {
      const t = (k + h * 12) % 12;
      return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(t - 3, 9 - t, 1));
    };
    return [f(0), f(8), f(4)];
  }
  // categorical palette: golden-ratio hues, three saturation/lightness levels
  const PAL = [];
  for (let j = 0; j < N_PAL; j++) {
    PAL.push(hsl((j * 0.618034 + 0.05) % 1, [0.75, 0.6, 0.85][j % 3], [0.47, 0.6, 0.36][Math.floor(j / 3) % 3]));
  }
  const css = (c) => `rgb(${Math.round(c[0] * 255)},${Math.round(c[1] * 255)},${Math.round(c[2] * 255)})`;
  // class colours are map.png's (computed in Python from the same colour map)
  const classColour = (c) => {
    const cc = S.meta && S.meta.class_colours;
    if (c < 1) return [0.6, 0.6, 0.6];
    return cc && cc[c - 1] ? cc[c - 1] : PAL[(c - 1) % N_PAL];
  };

  function fail(message, err) {
    api.error = message;
    $("cm-error").textContent = message;
    console.error("cryomanifold atlas: " + message, err || "");
  }

  async function decodeData(meta) {
    const node = $("cm-data");
    const bin = atob(node.textContent.trim());
    node.textContent = "";  // release the base64 text
    let bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    if (meta.compressed) {
      if (typeof DecompressionStream === "undefined") {
        throw new Error("this browser cannot read the compressed data (needs DecompressionStream: " +
          "Chrome 80+, Firefox 113+, Safari 16.4+); rewrite the atlas without --compress");
      }
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
      bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    }
    const types = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, float32: Float32Array };
    const out = {};
    for (const [name, spec] of Object.entries(meta.arrays)) {
      out[name] = new types[spec.dtype](bytes.buffer, bytes.byteOffset + spec.offset, spec.length);
    }
    return out;
  }

  // ---------------------------------------------------------------- state
  const S = {
    meta: null, d: null, n: 0, W: 1, H: 1, dpr: 1,
    view: { cx: 0, cy: 0, ppu: 1 }, fitPpu: 1,
    mode: "pan", colour: "class", sizeMul: 1, alpha: 0.7,
    sel: null, selCount: 0, classSel: null, classSize: null, hoverClass: -1,
    pass: null, flags: null, classOk: null, classSelRaw: null, filters: null, nPal: N_PAL,
    grid: null, gl: null, cards: [], drag: null, pending: false, hoverXY: null,
    interactive: false, idleTimer: 0, lod: null,
  };
  // target time of a frame while panning or zooming; above it, those frames draw a
  // random subset of the points (a software renderer needs it at 10^6 points; a GPU does not)
  const FRAME_BUDGET_MS = 25;
  const LOD_MIN_POINTS = 50000;

  // ---------------------------------------------------------------- WebGL
  const VS = (nPal) => `
    attribute vec2 a_pos; attribute float a_val; attribute float a_cls; attribute float a_sel;
    uniform vec2 u_scale; uniform vec2 u_offset;
    uniform float u_size; uniform float u_alpha; uniform float u_mode;
    uniform float u_catBase; uniform float u_zeroGrey;
    uniform float u_anySel; uniform float u_pass; uniform float u_hover;
    uniform vec3 u_pal[${nPal}]; uniform vec3 u_ramp[16];
    varying vec4 v_col;
    void main() {
      // a_sel: bit 0 selected, bit 1 filtered out by the sliders
      float fail = step(1.5, a_sel);
      float sel = (a_sel - 2.0 * fail) * (1.0 - fail);
      if (u_anySel > 0.5 && abs(sel - u_pass) > 0.5) {
        gl_Position = vec4(2.0, 2.0, 2.0, 1.0); gl_PointSize = 0.0; v_col = vec4(0.0); return;
      }
      gl_Position = vec4(a_pos * u_scale + u_offset, 0.0, 1.0);
      vec3 c;
      if (u_mode < 0.5) {
        if (u_zeroGrey > 0.5 && a_val < 0.5) { c = vec3(0.6); }
        else { c = u_pal[int(mod(a_val - u_catBase + 0.5, ${nPal}.0))]; }
      } else {
        float t = clamp(a_val, 0.0, 1.0) * 15.0;
        float i = min(floor(t), 14.0);
        c = mix(u_ramp[int(i)], u_ramp[int(i) + 1], t - i);
      }
      float a = u_alpha; float s = u_size;
      float hovered = u_hover > -0.5 && abs(a_cls - u_hover) < 0.5 ? 1.0 : 0.0;
      if (u_anySel > 0.5) {
        if (sel > 0.5) { s *= 1.4; a = max(a, 0.85); }
        else if (hovered < 0.5) { c = mix(c, vec3(0.8), 0.7); a *= 0.45; }
      }
      if (fail > 0.5) { c = mix(c, vec3(0.85), 0.8); a *= 0.25; }
      // hovering a class fades the others, but never the selected particles
      if (u_hover > -0.5 && abs(a_cls - u_hover) > 0.5 && sel < 0.5) { a *= 0.12; }
      gl_PointSize = s;
      v_col = vec4(c, a);
    }`;
  const FS = `
    precision mediump float;
    varying vec4 v_col; uniform float u_round;
    void main() {
      if (u_round > 0.5) { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; }
      gl_FragColor = v_col;
    }`;

  function compile(gl, type, src) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh));
    return sh;
  }

  function buffer(gl, array, usage) {
    // WebGL 1 has no 32-bit integer attributes: send those as float (exact below 2^24)
    const data = array instanceof Uint32Array ? new Float32Array(array) : array;
    const b = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, b);
    gl.bufferData(gl.ARRAY_BUFFER, data, usage || gl.STATIC_DRAW);
    const type = data instanceof Uint8Array ? gl.UNSIGNED_BYTE
      : data instanceof Uint16Array ? gl.UNSIGNED_SHORT : gl.FLOAT;
    return { b, type };
  }

  function initGL() {
    const canvas = $("cm-gl");
    const gl = canvas.getContext("webgl", { antialias: false, alpha: false, depth: false,
      stencil: false, preserveDrawingBuffer: false, powerPreference: "high-performance" });
    if (!gl) return null;
    const prog = gl.createProgram();
    // one palette entry per class where the GPU allows it (WebGL 1 guarantees 128 vectors)
    const room = gl.getParameter(gl.MAX_VERTEX_UNIFORM_VECTORS) - 40;
    S.nPal = Math.max(N_PAL, Math.min(S.meta.max_class, room));
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS(S.nPal)));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    const loc = {};
    for (const a of ["a_pos", "a_val", "a_cls", "a_sel"]) loc[a] = gl.getAttribLocation(prog, a);
    for (const u of ["u_scale", "u_offset", "u_size", "u_alpha", "u_mode", "u_catBase", "u_zeroGrey",
      "u_anySel", "u_pass", "u_hover", "u_pal", "u_ramp", "u_round"]) loc[u] = gl.getUniformLocation(prog, u);
    gl.uniform3fv(loc.u_ramp, new Float32Array(RAMP));
    const d = S.d;
    const bufs = { pos: buffer(gl, d.pos), cls: buffer(gl, d.cls), sel: buffer(gl, S.flags, gl.DYNAMIC_DRAW) };
    for (const f of ["probability", "junk", "defocus", "micrograph"]) if (d[f]) bufs[f] = buffer(gl, d[f]);
    addLayerBuffers(gl, bufs);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    canvas.addEventListener("webglcontextlost", (e) => { e.preventDefault(); fail("WebGL context lost; reload the page"); });
    return { gl, canvas, loc, bufs, px: new Uint8Array(4), palette: null,
      uintIndex: !!gl.getExtension("OES_element_index_uint") };
  }

  // the categorical palette of the current colouring: map.png's class colours, or
  // golden-ratio hues for micrographs
  function uploadPalette(G) {
    const kind = S.colour === "class" ? "class" : "other";
    if (G.palette === kind) return;
    const flat = new Float32Array(3 * S.nPal);
    for (let j = 0; j < S.nPal; j++) flat.set(kind === "class" ? classColour(j + 1) : PAL[j % N_PAL], 3 * j);
    G.gl.uniform3fv(G.loc.u_pal, flat);
    G.palette = kind;
  }

  // After timing a full frame: if it is too slow for panning, prepare a random
  // subset of the points (an index buffer) that interactive frames draw instead.
  function setupLod(fullFrameMs) {
    const G = S.gl;
    S.fullFrameMs = fullFrameMs;
    if (!G || !G.uintIndex || fullFrameMs <= FRAME_BUDGET_MS) return;
    const m = Math.max(LOD_MIN_POINTS, Math.floor(S.n * FRAME_BUDGET_MS / fullFrameMs));
    if (m >= 0.8 * S.n) return;
    const idx = new Uint32Array(m);
    let k = 0, seed = 12345;
    for (let i = 0; i < S.n && k < m; i++) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;  // LCG: reproducible sample
      if (seed / 4294967296 * (S.n - i) < m - k) idx[k++] = i;  // selection sampling
    }
    const b = G.gl.createBuffer();
    G.gl.bindBuffer(G.gl.ELEMENT_ARRAY_BUFFER, b);
    G.gl.bufferData(G.gl.ELEMENT_ARRAY_BUFFER, idx, G.gl.STATIC_DRAW);
    S.lod = { b, m: k };
  }

  function interacting() {
    if (!S.lod) return;
    S.interactive = true;
    clearTimeout(S.idleTimer);
    S.idleTimer = setTimeout(() => { S.interactive = false; requestDraw(); }, 200);
  }

  function attrib(G, name, buf, size, normalized) {
    const { gl } = G;
    gl.bindBuffer(gl.ARRAY_BUFFER, buf.b);
    gl.enableVertexAttribArray(G.loc[name]);
    gl.vertexAttribPointer(G.loc[name], size, buf.type, normalized, 0, 0);
  }

  function pointSizeCss() {
    const base = Math.min(6, Math.max(1, 2.2 * Math.sqrt(3e4 / Math.max(S.n, 1))));
    const zoom = Math.min(8, Math.max(1, Math.sqrt(S.view.ppu / S.fitPpu)));
    return base * zoom * S.sizeMul;
  }

  function draw() {
    const G = S.gl;
    if (!G) return;
    const { gl, loc } = G;
    const b = S.meta.bounds, v = S.view;
    gl.viewport(0, 0, G.canvas.width, G.canvas.height);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const kx = 2 * v.ppu / S.W, ky = 2 * v.ppu / S.H;
    gl.uniform2f(loc.u_scale, (b[1] - b[0]) * kx, (b[3] - b[2]) * ky);
    gl.uniform2f(loc.u_offset, (b[0] - v.cx) * kx, (b[2] - v.cy) * ky);
    const size = pointSizeCss() * S.dpr;
    gl.uniform1f(loc.u_size, size);
    gl.uniform1f(loc.u_round, size >= 3 ? 1 : 0);
    drawReference(G);
    gl.uniform1f(loc.u_alpha, S.alpha);
    gl.uniform1f(loc.u_hover, S.hoverClass);
    const field = S.meta.fields[S.colour];
    const categorical = field.kind === "category";
    uploadPalette(G);
    gl.uniform1f(loc.u_mode, categorical ? 0 : 1);
    gl.uniform1f(loc.u_catBase, S.colour === "class" ? 1 : 0);
    gl.uniform1f(loc.u_zeroGrey, S.colour === "class" ? 1 : 0);
    attrib(G, "a_pos", G.bufs.pos, 2, true);
    attrib(G, "a_cls", G.bufs.cls, 1, false);
    attrib(G, "a_sel", G.bufs.sel, 1, false);
    attrib(G, "a_val", G.bufs[S.colour === "class" ? "cls" : S.colour], 1, !categorical);
    const anySel = S.selCount > 0;
    gl.uniform1f(loc.u_anySel, anySel ? 1 : 0);
    const lod = S.interactive && S.lod ? S.lod : null;
    if (lod) gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, lod.b);
    for (let pass = 0; pass < (anySel ? 2 : 1); pass++) {
      gl.uniform1f(loc.u_pass, pass);
      if (lod) gl.drawElements(gl.POINTS, lod.m, gl.UNSIGNED_INT, 0);
      else gl.drawArrays(gl.POINTS, 0, S.n);
    }
  }

  function requestDraw() {
    if (S.pending) return;
    S.pending = true;
    requestAnimationFrame(() => { S.pending = false; draw(); });
  }

  function syncGPU() {
    const G = S.gl;
    if (G) G.gl.readPixels(0, 0, 1, 1, G.gl.RGBA, G.gl.UNSIGNED_BYTE, G.px);
  }

  // ---------------------------------------------------------------- view
  function resize() {
    const plot = $("cm-plot");
    S.dpr = window.devicePixelRatio || 1;
    S.W = Math.max(1, plot.clientWidth);
    S.H = Math.max(1, plot.clientHeight);
    for (const c of [$("cm-gl"), $("cm-overlay")]) {
      c.width = Math.round(S.W * S.dpr);
      c.height = Math.round(S.H * S.dpr);
    }
    const b = S.meta.bounds;
    S.fitPpu = 0.92 * Math.min(S.W / (b[1] - b[0]), S.H / (b[3] - b[2]));
    if (!S.viewSet) fitView();
    requestDraw();
  }

  function fitView() {
    const b = S.meta.bounds;
    S.view = { cx: 0.5 * (b[0] + b[1]), cy: 0.5 * (b[2] + b[3]), ppu: S.fitPpu };
    S.viewSet = true;
    requestDraw();
  }

  const toWorld = (sx, sy) => [S.view.cx + (sx - S.W / 2) / S.view.ppu, S.view.cy - (sy - S.H / 2) / S.view.ppu];

  // screen (CSS px) = q * a + c, per axis, for uint16 positions q
  function screenMap() {
    const b = S.meta.bounds, v = S.view;
    return {
      ax: (b[1] - b[0]) / 65535 * v.ppu, cx: S.W / 2 + (b[0] - v.cx) * v.ppu,
      ay: -(b[3] - b[2]) / 65535 * v.ppu, cy: S.H / 2 - (b[2] - v.cy) * v.ppu,
    };
  }

  function pointScreen(i) {
    const m = screenMap(), p = S.d.pos;
    return [p[2 * i] * m.ax + m.cx, p[2 * i + 1] * m.ay + m.cy];
  }

  // ---------------------------------------------------------------- hover grid
  const GRID = 256;
  function buildGrid() {
    const n = S.n, p = S.d.pos;
    const cell = new Uint32Array(n), start = new Uint32Array(GRID * GRID + 1);
    for (let i = 0; i < n; i++) {
      const c = ((p[2 * i + 1] * GRID) >>> 16) * GRID + ((p[2 * i] * GRID) >>> 16);
      cell[i] = c;
      start[c + 1]++;
    }
    for (let c = 0; c < GRID * GRID; c++) start[c + 1] += start[c];
    const fill = start.slice(0, GRID * GRID), items = new Uint32Array(n);
    for (let i = 0; i < n; i++) items[fill[cell[i]]++] = i;
    S.grid = { start, items };
  }

  function nearestPoint(sx, sy, radius) {
    const m = screenMap(), p = S.d.pos, g = S.grid;
    // the query box in uint16 units, then in cells
    const qx0 = (sx - radius - m.cx) / m.ax, qx1 = (sx + radius - m.cx) / m.ax;
    const qy0 = (sy + radius - m.cy) / m.ay, qy1 = (sy - radius - m.cy) / m.ay;
    const cl = (q) => Math.min(GRID - 1, Math.max(0, Math.floor(q * GRID / 65536)));
    if (qx1 < 0 || qx0 > 65535 || qy1 < 0 || qy0 > 65535) return -1;
    let best = -1, bestD = radius * radius;
    for (let gy = cl(qy0); gy <= cl(qy1); gy++) {
      for (let gx = cl(qx0); gx <= cl(qx1); gx++) {
        const c = gy * GRID + gx;
        for (let k = g.start[c]; k < g.start[c + 1]; k++) {
          const i = g.items[k];
          const dx = p[2 * i] * m.ax + m.cx - sx, dy = p[2 * i + 1] * m.ay + m.cy - sy;
          const d2 = dx * dx + dy * dy;
          if (d2 <= bestD) { bestD = d2; best = i; }
        }
      }
    }
    return best;
  }

  // ---------------------------------------------------------------- images
  function paint(canvas, arr, index) {
    const b = S.meta.image_box;
    canvas.width = b;
    canvas.height = b;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(b, b), px = img.data, off = index * b * b;
    for (let j = 0; j < b * b; j++) {
      const v = arr[off + j];
      px[4 * j] = v; px[4 * j + 1] = v; px[4 * j + 2] = v; px[4 * j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  // a scale bar of a round length, about a third of the box, at the bottom left
  function scaleBar() {
    const px = S.meta.image_pixel_angstrom, b = S.meta.image_box;
    if (!px || !(px > 0)) return null;
    const lengths = [2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000];
    let L = lengths[0];
    for (const l of lengths) if (l / px <= 0.4 * b) L = l;
    const h = Math.max(1, Math.round(b / 40)), margin = Math.max(1, Math.round(b / 16));
    return { angstrom: L, px: Math.max(1, Math.round(L / px)), x: margin, y: b - margin - h, h };
  }

  function averageCanvas(c, cls) {
    const cv = document.createElement("canvas");
    cv.className = cls || "avg";
    cv.dataset.cls = String(c);
    paint(cv, S.d.averages, c - 1);
    const bar = S.scaleBar;
    if (bar) {
      const ctx = cv.getContext("2d");
      ctx.fillStyle = "#fff";
      ctx.fillRect(bar.x, bar.y, bar.px, bar.h);
      cv.title = `scale bar ${bar.angstrom} Å`;
    }
    return cv;
  }

  function exampleCanvases(c) {
    const m = S.meta.examples_per_class, out = [];
    for (let j = 0; j < m; j++) {
      const idx = (c - 1) * m + j;
      if (S.meta.example_present[idx]) out.push(paint(document.createElement("canvas"), S.d.examples, idx));
    }
    return out;
  }

  // ---------------------------------------------------------------- info panel
  const fmt = (x, digits) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(digits));

  function fieldValue(name, i) {
    const f = S.meta.fields[name], a = S.d[name];
    if (!f || !a) return null;
    if (name === "micrograph") return S.meta.micrographs[a[i]];
    const top = a instanceof Uint16Array ? 65535 : 255;
    return f.range[0] + (a[i] / top) * (f.range[1] - f.range[0]);
  }

  function line(parent, text, cls) {
    const div = document.createElement("div");
    if (cls) div.className = cls;
    div.textContent = text;
    parent.appendChild(div);
    return div;
  }

  function showClass(c, i) {
    S.shown = [c, i];
    const info = $("cm-info");
    info.replaceChildren();
    info.dataset.cls = String(c);
    info.dataset.point = i === null || i === undefined ? "" : String(i);
    const row = S.classRow[c];
    if (!row) {
      const t = line(info, "", "text");
      line(t, "Unassigned particle", "title");
      if (i !== null && i !== undefined) line(t, `particle #${i}`);
      return;
    }
    info.appendChild(averageCanvas(c));
    const t = line(info, "", "text");
    const title = line(t, `Class ${c} `, "title");
    const badge = document.createElement("span");
    badge.className = row.junk ? "badge" : "badge ok";
    badge.textContent = row.junk ? "junk" : "not junk";
    title.appendChild(badge);
    line(t, `${row.size.toLocaleString()} particles (${(100 * row.size / S.n).toFixed(1)} %)`);
    line(t, `junk score ${fmt(row.junk_score, 2)} · quality ${fmt(row.quality, 2)}` +
      (row.resolution !== null ? ` · resolution ${fmt(row.resolution, 1)} Å` : ""));
    line(t, `${S.classSel[c].toLocaleString()} selected` +
      (S.scaleBar ? ` · scale bar ${S.scaleBar.angstrom} Å` : ""), "hint");
    if (i !== null && i !== undefined) {
      const parts = [`particle #${i}`];
      const p = fieldValue("probability", i), j = fieldValue("junk", i), df = fieldValue("defocus", i);
      if (p !== null) parts.push(`p = ${p.toFixed(2)}`);
      if (j !== null) parts.push(`junk ${j.toFixed(2)}`);
      if (df !== null) parts.push(`defocus ≈ ${Math.round(df).toLocaleString()} Å`);
      line(t, parts.join(" · "));
      const mic = fieldValue("micrograph", i);
      if (mic !== null) line(t, mic, "hint");
      const ds = datasetOf(i);
      if (ds) line(t, `dataset ${ds.name} · row ${i - ds.offset}${novelText(i)}`, "hint");
    }
    const ex = line(t, "", "examples");
    for (const cv of exampleCanvases(c)) ex.appendChild(cv);
  }

  function setHoverClass(c) {
    if (S.hoverClass === c) return;
    S.hoverClass = c;
    requestDraw();
  }

  // ---------------------------------------------------------------- selection
  // particles that pass the sliders (junk score, class probability, class resolution)
  function computePass() {
    const f = S.filters, d = S.d, n = S.n, pass = S.pass, ok = S.classOk;
    const rr = S.meta.resolution_range;
    const resOn = !!rr && f.resolution < rr[1] - 1e-9;
    ok.fill(resOn ? 0 : 1);
    if (resOn) {
      for (const row of S.meta.classes) ok[row.c] = row.resolution !== null && row.resolution <= f.resolution + 1e-9 ? 1 : 0;
    }
    const jq = Math.round(f.junk * 255), pq = Math.round(f.probability * 255);
    const junk = f.junk < 1 && d.junk ? d.junk : null, prob = f.probability > 0 && d.probability ? d.probability : null;
    const cls = d.cls;
    let k = 0;
    for (let i = 0; i < n; i++) {
      const v = ok[cls[i]] && (!junk || junk[i] <= jq) && (!prob || prob[i] >= pq) ? 1 : 0;
      pass[i] = v;
      k += v;
    }
    S.passCount = k;
    S.filtersActive = resOn || !!junk || !!prob;
  }

  function recount() {
    const n = S.n, sel = S.sel, pass = S.pass, flags = S.flags, cls = S.d.cls;
    const cs = S.classSel, raw = S.classSelRaw;
    cs.fill(0);
    raw.fill(0);
    let count = 0;
    for (let i = 0; i < n; i++) {
      const on = sel[i] && pass[i];
      if (sel[i]) raw[cls[i]]++;
      if (on) { count++; cs[cls[i]]++; }
      flags[i] = (sel[i] ? 1 : 0) | (pass[i] ? 0 : 2);
    }
    S.selCount = count;
    const G = S.gl;
    if (G) {
      G.gl.bindBuffer(G.gl.ARRAY_BUFFER, G.bufs.sel.b);
      G.gl.bufferSubData(G.gl.ARRAY_BUFFER, 0, flags);
    }
    $("cm-count").textContent = `${count.toLocaleString()} selected (${(100 * count / Math.max(n, 1)).toFixed(1)} %)`;
    $("cm-download").disabled = count === 0;
    $("cm-copy").disabled = count === 0;
    for (const row of S.meta.classes) {
      const card = S.cards[row.c];
      if (!card) continue;
      const k = cs[row.c];
      card.classList.toggle("sel-full", k > 0 && k === S.classSize[row.c]);
      card.classList.toggle("sel-part", k > 0 && k < S.classSize[row.c]);
      card.classList.toggle("filtered", !S.classOk[row.c]);
    }
    $("cm-filter-count").textContent = S.filtersActive
      ? `${S.passCount.toLocaleString()} of ${n.toLocaleString()} particles pass` : "";
    $("cm-command").value = count ? exportCommand() : "select classes or particles first";
    if (S.shown) showClass(...S.shown);  // its "selected" count changed
    requestDraw();
  }

  function readFilters() {
    const rr = S.meta.resolution_range;
    S.filters = {
      junk: Number($("cm-f-junk").value),
      probability: Number($("cm-f-prob").value),
      resolution: rr ? Number($("cm-f-res").value) : Infinity,
    };
    $("cm-f-junk-v").textContent = S.filters.junk.toFixed(2);
    $("cm-f-prob-v").textContent = S.filters.probability.toFixed(2);
    $("cm-f-res-v").textContent = rr ? `${S.filters.resolution.toFixed(1)} Å` : "n/a";
    computePass();
    recount();
  }

  function combine(mask, op) {
    const sel = S.sel, n = S.n;
    if (op === "replace") sel.set(mask);
    else if (op === "add") for (let i = 0; i < n; i++) sel[i] |= mask[i];
    else for (let i = 0; i < n; i++) sel[i] &= 1 - mask[i];
    recount();
  }

  function toggleClass(c) {
    const on = S.classSelRaw[c] < S.classSize[c] ? 1 : 0, sel = S.sel, cls = S.d.cls;
    for (let i = 0; i < S.n; i++) if (cls[i] === c) sel[i] = on;
    recount();
  }

  function selectBox(x0, y0, x1, y1, op) {
    const m = screenMap(), p = S.d.pos, n = S.n, mask = new Uint8Array(n);
    const ux0 = (Math.min(x0, x1) - m.cx) / m.ax, ux1 = (Math.max(x0, x1) - m.cx) / m.ax;
    const uy0 = (Math.max(y0, y1) - m.cy) / m.ay, uy1 = (Math.min(y0, y1) - m.cy) / m.ay;
    for (let i = 0; i < n; i++) {
      const u = p[2 * i], v = p[2 * i + 1];
      mask[i] = u >= ux0 && u <= ux1 && v >= uy0 && v <= uy1 ? 1 : 0;
    }
    combine(mask, op);
  }

  function selectLasso(path, op) {
    if (path.length < 3) return;
    const W = Math.ceil(S.W), H = Math.ceil(S.H);
    const off = document.createElement("canvas");
    off.width = W;
    off.height = H;
    const ctx = off.getContext("2d", { willReadFrequently: true });
    ctx.beginPath();
    ctx.moveTo(path[0][0], path[0][1]);
    for (const [x, y] of path.slice(1)) ctx.lineTo(x, y);
    ctx.closePath();
    ctx.fill();
    const alpha = ctx.getImageData(0, 0, W, H).data;
    const m = screenMap(), p = S.d.pos, n = S.n, mask = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const x = Math.floor(p[2 * i] * m.ax + m.cx), y = Math.floor(p[2 * i + 1] * m.ay + m.cy);
      mask[i] = x >= 0 && y >= 0 && x < W && y < H && alpha[4 * (y * W + x) + 3] > 127 ? 1 : 0;
    }
    combine(mask, op);
  }

  function selectionObject() {
    const idx = [];
    for (let i = 0; i < S.n; i++) if (S.sel[i] && S.pass[i]) idx.push(i);
    let whole = S.classSel[0] === 0;
    const classes = [];
    for (const row of S.meta.classes) {
      const k = S.classSel[row.c];
      if (k === 0) continue;
      if (k === S.classSize[row.c]) classes.push(row.c); else whole = false;
    }
    const obj = { format: "cryomanifold-selection", version: 1, run_id: S.meta.run_id,
      n_particles: S.n, n_selected: idx.length };
    if (whole) obj.class_numbers = classes;
    obj.particle_indices = idx;
    if (S.filtersActive) {
      const f = {};
      if (S.filters.junk < 1) f.junk_score_max = S.filters.junk;
      if (S.filters.probability > 0) f.class_probability_min = S.filters.probability;
      if (S.meta.resolution_range && S.filters.resolution < S.meta.resolution_range[1]) {
        f.class_resolution_max_angstrom = S.filters.resolution;
      }
      obj.filters = f;  // how the selection was narrowed (for the record; not reapplied)
    }
    return obj;
  }

  const shellQuote = (t) => (/^[\w@%+=:,./-]+$/.test(t) ? t : `'${t.replace(/'/g, "'\\''")}'`);

  // the command that writes this selection: --classes for whole classes and no
  // filters, else the downloaded selection.json
  function exportCommand() {
    const obj = selectionObject();
    const fmtSel = $("cm-out-format");
    const ext = fmtSel && fmtSel.value === "cs" ? "cs" : "star";
    const parts = ["cryomanifold", "export", shellQuote(S.meta.run_dir || "RUN_DIR")];
    if (obj.class_numbers && !S.filtersActive) parts.push("--classes", obj.class_numbers.join(","));
    else parts.push("--selection", "selection.json");
    parts.push("--out", `particles_selected.${ext}`);
    return parts.join(" ");
  }

  function copyCommand() {
    const box = $("cm-command");
    box.select();
    const done = () => { $("cm-copy").textContent = "Copied"; setTimeout(() => { $("cm-copy").textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(box.value).then(done, () => {});
    else { try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ } }
  }

  function download() {
    const blob = new Blob([JSON.stringify(selectionObject())], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "selection.json";
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
  }

  // ---------------------------------------------------------------- overlay
  function drawOverlay() {
    const ov = $("cm-overlay"), ctx = ov.getContext("2d");
    ctx.setTransform(S.dpr, 0, 0, S.dpr, 0, 0);
    ctx.clearRect(0, 0, S.W, S.H);
    const d = S.drag;
    if (!d || d.kind === "pan") return;
    ctx.strokeStyle = "#1f6feb";
    ctx.fillStyle = "rgba(31,111,235,0.12)";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    if (d.kind === "box") {
      ctx.rect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    } else {
      ctx.moveTo(d.path[0][0], d.path[0][1]);
      for (const [x, y] of d.path) ctx.lineTo(x, y);
      ctx.closePath();
    }
    ctx.fill();
    ctx.stroke();
  }

  // ---------------------------------------------------------------- UI wiring
  function setMode(mode) {
    S.mode = mode;
    for (const m of ["pan", "box", "lasso"]) $("cm-mode-" + m).classList.toggle("on", m === mode);
    $("cm-plot").className = "mode-" + mode;
  }

  function hoverAt(sx, sy) {
    const tip = $("cm-tip");
    const i = S.grid ? nearestPoint(sx, sy, 8) : -1;
    if (i < 0) { tip.style.display = "none"; return; }
    const c = S.d.cls[i];
    tip.textContent = c ? `class ${c} · particle #${i}` : `unassigned · particle #${i}`;
    tip.style.display = "block";
    tip.style.left = `${Math.min(sx + 12, S.W - 160)}px`;
    tip.style.top = `${sy + 12}px`;
    if (S.info !== `${c}:${i}`) { S.info = `${c}:${i}`; showClass(c, i); }
  }

  function wirePlot() {
    const plot = $("cm-plot");
    const local = (e) => { const r = plot.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    plot.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      const [x, y] = local(e);
      const op = e.shiftKey ? "add" : e.altKey || e.ctrlKey || e.metaKey ? "subtract" : "replace";
      plot.setPointerCapture(e.pointerId);
      $("cm-tip").style.display = "none";
      setHoverClass(-1);
      if (S.mode === "pan") S.drag = { kind: "pan", x, y, cx: S.view.cx, cy: S.view.cy };
      else if (S.mode === "box") S.drag = { kind: "box", x0: x, y0: y, x1: x, y1: y, op };
      else S.drag = { kind: "lasso", path: [[x, y]], op };
    });
    plot.addEventListener("pointermove", (e) => {
      const [x, y] = local(e);
      const d = S.drag;
      if (!d) {
        S.hoverXY = [x, y];
        if (!S.hoverPending) {
          S.hoverPending = true;
          requestAnimationFrame(() => { S.hoverPending = false; if (S.hoverXY) hoverAt(...S.hoverXY); });
        }
        return;
      }
      if (d.kind === "pan") {
        S.view.cx = d.cx - (x - d.x) / S.view.ppu;
        S.view.cy = d.cy + (y - d.y) / S.view.ppu;
        interacting();
        requestDraw();
      } else if (d.kind === "box") { d.x1 = x; d.y1 = y; drawOverlay(); }
      else { d.path.push([x, y]); drawOverlay(); }
    });
    const end = () => {
      const d = S.drag;
      S.drag = null;
      if (!d) return;
      if (d.kind === "box" && Math.abs(d.x1 - d.x0) + Math.abs(d.y1 - d.y0) > 2) selectBox(d.x0, d.y0, d.x1, d.y1, d.op);
      else if (d.kind === "lasso") selectLasso(d.path, d.op);
      drawOverlay();
    };
    plot.addEventListener("pointerup", end);
    plot.addEventListener("pointercancel", end);
    plot.addEventListener("pointerleave", () => {
      S.hoverXY = null;
      $("cm-tip").style.display = "none";
    });
    plot.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = local(e);
      const [wx, wy] = toWorld(x, y);
      const f = Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015));
      const ppu = Math.min(S.fitPpu * 1e4, Math.max(S.fitPpu * 0.1, S.view.ppu * f));
      S.view.cx = wx - (x - S.W / 2) / ppu;
      S.view.cy = wy + (y - S.H / 2) / ppu;
      S.view.ppu = ppu;
      interacting();
      requestDraw();
    }, { passive: false });
    plot.addEventListener("dblclick", fitView);
    new ResizeObserver(resize).observe(plot);
  }

  function legend() {
    const el = $("cm-legend"), f = S.meta.fields[S.colour];
    el.replaceChildren();
    if (S.colour === "dataset") { datasetLegend(el); return; }
    if (f.kind === "category") {
      const n = S.colour === "class" ? S.meta.n_classes : S.meta.micrographs.length;
      line(el, `colour: ${f.label} (${n.toLocaleString()}${S.colour === "class" ? ", see gallery" : ""})`);
      return;
    }
    line(el, `colour: ${f.label}`);
    const bar = line(el, "", "bar");
    const stops = [];
    for (let j = 0; j < 16; j++) stops.push(css(RAMP.slice(3 * j, 3 * j + 3)));
    bar.style.background = `linear-gradient(to right, ${stops.join(",")})`;
    const ends = line(el, "", "ends");
    const digits = f.range[1] - f.range[0] > 100 ? 0 : 2;
    line(ends, Number(f.range[0]).toFixed(digits));
    line(ends, Number(f.range[1]).toFixed(digits));
  }

  function buildGallery() {
    const gal = $("cm-gallery");
    for (const row of S.meta.classes) {
      const c = row.c;
      const card = document.createElement("div");
      card.className = "card" + (row.junk ? " junk" : "");
      card.dataset.cls = String(c);
      card.title = `class ${c}: click to select or deselect its particles`;
      card.style.borderLeftColor = css(classColour(c));
      card.appendChild(averageCanvas(c));
      const cap = line(card, "", "cap");
      const name = line(cap, `#${c} `);
      if (row.junk) {
        const b = document.createElement("span");
        b.className = "badge";
        b.textContent = "junk";
        name.appendChild(b);
      }
      const stats = line(cap, row.size.toLocaleString(), "stats");
      if (row.resolution !== null) {
        const r = document.createElement("span");
        r.className = "res";
        r.textContent = ` · ${row.resolution.toFixed(1)} Å`;
        stats.appendChild(r);
      }
      const ex = line(card, "", "ex");
      for (const cv of exampleCanvases(c).slice(0, 4)) ex.appendChild(cv);
      card.addEventListener("click", () => toggleClass(c));
      card.addEventListener("mouseenter", () => { S.info = null; showClass(c, null); setHoverClass(c); });
      card.addEventListener("mouseleave", () => setHoverClass(-1));
      S.cards[c] = card;
    }
    sortGallery("size");
    $("cm-nclasses").textContent = `${S.meta.n_classes} classes` +
      (S.scaleBar ? ` · bar ${S.scaleBar.angstrom} Å` : "");
  }

  function sortGallery(key) {
    const rows = S.meta.classes.slice();
    const js = (r) => (r.junk_score === null ? -1 : r.junk_score);
    const res = (r) => (r.resolution === null ? Infinity : r.resolution);
    if (key === "size") rows.sort((a, b) => b.size - a.size || a.c - b.c);
    else if (key === "junk") rows.sort((a, b) => js(b) - js(a) || a.c - b.c);
    else if (key === "resolution") rows.sort((a, b) => res(a) - res(b) || a.c - b.c);
    else rows.sort((a, b) => a.c - b.c);
    $("cm-gallery").replaceChildren(...rows.map((r) => S.cards[r.c]));
  }

  function wireControls() {
    const sel = $("cm-colour");
    for (const [name, f] of Object.entries(S.meta.fields)) {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = f.label;
      sel.appendChild(o);
    }
    sel.addEventListener("change", () => { S.colour = sel.value; legend(); requestDraw(); });
    for (const m of ["pan", "box", "lasso"]) $("cm-mode-" + m).addEventListener("click", () => setMode(m));
    $("cm-reset").addEventListener("click", fitView);
    $("cm-size").addEventListener("input", (e) => { S.sizeMul = Number(e.target.value); requestDraw(); });
    $("cm-alpha").addEventListener("input", (e) => { S.alpha = Number(e.target.value); requestDraw(); });
    $("cm-clear").addEventListener("click", () => { S.sel.fill(0); recount(); });
    $("cm-invert").addEventListener("click", () => { for (let i = 0; i < S.n; i++) S.sel[i] ^= 1; recount(); });
    $("cm-download").addEventListener("click", download);
    $("cm-copy").addEventListener("click", copyCommand);
    if (S.meta.input_kind === "cs") $("cm-out-format").hidden = false;
    $("cm-out-format").addEventListener("change", recount);
    for (const [id, field] of [["cm-f-junk", "junk"], ["cm-f-prob", "probability"]]) {
      $(id).disabled = !S.d[field];
      $(id).addEventListener("input", readFilters);
    }
    const rr = S.meta.resolution_range, res = $("cm-f-res");
    if (rr) {
      const lo = Math.floor(rr[0] * 10) / 10, hi = Math.ceil(rr[1] * 10) / 10;
      res.min = String(lo);
      res.max = String(hi);
      res.step = "0.1";
      res.value = String(hi);
      S.meta.resolution_range = [lo, hi];
    } else {
      res.disabled = true;
      res.title = "this run has no per-class resolution";
    }
    res.addEventListener("input", readFilters);
    $("cm-f-reset").addEventListener("click", () => {
      $("cm-f-junk").value = "1";
      $("cm-f-prob").value = "0";
      if (rr) res.value = res.max;
      readFilters();
    });
    $("cm-sort").addEventListener("change", (e) => sortGallery(e.target.value));
    document.addEventListener("keydown", (e) => {
      if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
      const m = { p: "pan", b: "box", l: "lasso" }[e.key.toLowerCase()];
      if (m && !e.ctrlKey && !e.metaKey) setMode(m);
    });
  }

  // ---------------------------------------------------------------- projections and atlases of datasets
  // (issue 13) A projection draws the map it was placed into as a grey layer under its
  // particles (arrays.reference); an atlas of datasets has a "dataset" field and
  // meta.datasets ({name, offset, n_particles} in row order) for the legend and the panel.
  function addLayerBuffers(gl, bufs) {
    const d = S.d;
    for (const f of ["novel", "dataset"]) if (d[f]) bufs[f] = buffer(gl, d[f]);
    if (d.reference) bufs.reference = buffer(gl, d.reference);
  }

  function drawReference(G) {
    const { gl, loc } = G, ref = G.bufs.reference;
    if (!ref || !S.meta.n_reference) return;
    attrib(G, "a_pos", ref, 2, true);
    for (const a of ["a_val", "a_cls", "a_sel"]) gl.disableVertexAttribArray(loc[a]);
    gl.vertexAttrib1f(loc.a_val, 0);
    gl.vertexAttrib1f(loc.a_cls, -1);
    gl.vertexAttrib1f(loc.a_sel, 0);
    gl.uniform1f(loc.u_mode, 0);
    gl.uniform1f(loc.u_zeroGrey, 1);
    gl.uniform1f(loc.u_anySel, 0);
    gl.uniform1f(loc.u_hover, -1);
    gl.uniform1f(loc.u_alpha, 0.3 * S.alpha);
    gl.drawArrays(gl.POINTS, 0, S.meta.n_reference);
  }

  function datasetOf(i) {
    const list = S.meta.datasets;
    if (!list) return null;
    for (const ds of list) if (i >= ds.offset && i < ds.offset + ds.n_particles) return ds;
    return null;
  }

  function novelText(i) {
    return S.d.novel && S.d.novel[i] > 127 ? " · novel (outside the map)" : "";
  }

  function datasetLegend(el) {
    line(el, `colour: dataset (${S.meta.datasets.length})`);
    S.meta.datasets.forEach((ds, j) => {
      const row = line(el, "", "ds");
      const sw = document.createElement("span");
      sw.style.cssText = `display:inline-block;width:10px;height:10px;margin-right:4px;background:${css(PAL[j % N_PAL])}`;
      row.appendChild(sw);
      row.appendChild(document.createTextNode(`${ds.name} (${ds.n_particles.toLocaleString()})`));
    });
  }

  // ---------------------------------------------------------------- test/benchmark API
  function exposeApi() {
    Object.assign(api, {
      n: S.n,
      runId: S.meta.run_id,
      selectedCount: () => S.selCount,
      selectionObject,
      classOf: (i) => S.d.cls[i],
      classColour: (c) => classColour(c).map((v) => Math.round(v * 255)),
      scaleBar: () => S.scaleBar,
      exportCommand,
      passCount: () => S.passCount,
      setFilters(f) {
        if (f.junk !== undefined) $("cm-f-junk").value = String(f.junk);
        if (f.probability !== undefined) $("cm-f-prob").value = String(f.probability);
        if (f.resolution !== undefined) $("cm-f-res").value = String(f.resolution);
        readFilters();
      },
      pointClient(i) {
        const r = $("cm-plot").getBoundingClientRect(), [x, y] = pointScreen(i);
        return { x: r.left + x, y: r.top + y };
      },
      setColour(name) { $("cm-colour").value = name; S.colour = name; legend(); requestDraw(); },
      lodPoints: () => (S.lod ? S.lod.m : S.n),
      fullFrameMs: () => S.fullFrameMs,
      // time of a synchronous pan frame (draw + GPU read-back), ms; interactive:
      // as drawn while dragging (the subset, if the page uses one)
      benchPan(frames, interactive) {
        const t = [], v0 = { ...S.view }, before = S.interactive;
        S.interactive = !!interactive;
        for (let k = 0; k < frames; k++) {
          S.view.cx = v0.cx + (k % 10) * 3 / S.view.ppu;
          const t0 = performance.now();
          draw();
          syncGPU();
          t.push(performance.now() - t0);
        }
        S.view = v0;
        S.interactive = before;
        draw();
        t.sort((a, b) => a - b);
        return { mean: t.reduce((a, b) => a + b, 0) / t.length, median: t[t.length >> 1], max: t[t.length - 1] };
      },
      // median interval between animation frames while panning every frame, ms
      benchPanRaf(frames) {
        return new Promise((resolve) => {
          const dts = [], v0 = { ...S.view };
          S.interactive = true;
          let last = null, k = 0;
          const step = (ts) => {
            if (last !== null) dts.push(ts - last);
            last = ts;
            S.view.cx = v0.cx + (k++ % 10) * 3 / S.view.ppu;
            draw();
            if (dts.length < frames) requestAnimationFrame(step);
            else { S.view = v0; S.interactive = false; draw(); dts.sort((a, b) => a - b); resolve({ median: dts[dts.length >> 1], mean: dts.reduce((a, b) => a + b, 0) / dts.length }); }
          };
          requestAnimationFrame(step);
        });
      },
    });
  }

  // ---------------------------------------------------------------- start
  async function main() {
    const meta = JSON.parse($("cm-meta").textContent);
    S.meta = meta;
    S.n = meta.n;
    S.classRow = {};
    for (const row of meta.classes) S.classRow[row.c] = row;
    S.d = await decodeData(meta);
    api.timings.decode_ms = performance.now() - T0;
    S.sel = new Uint8Array(S.n);
    S.pass = new Uint8Array(S.n).fill(1);
    S.flags = new Uint8Array(S.n);
    S.classSel = new Int32Array(meta.max_class + 1);
    S.classSelRaw = new Int32Array(meta.max_class + 1);
    S.classOk = new Uint8Array(meta.max_class + 1).fill(1);
    S.classSize = new Int32Array(meta.max_class + 1);
    S.scaleBar = scaleBar();
    for (let i = 0; i < S.n; i++) S.classSize[S.d.cls[i]]++;
    wireControls();
    buildGallery();
    legend();
    try {
      S.gl = initGL();
    } catch (err) {
      S.gl = null;
      fail("WebGL setup failed: " + err.message, err);
    }
    if (!S.gl && !api.error) fail("WebGL is not available in this browser: the map cannot be drawn (the gallery works).");
    resize();
    wirePlot();
    exposeApi();
    api.timings.setup_ms = performance.now() - T0;
    draw();
    syncGPU();
    S.pending = false;
    api.timings.first_frame_ms = performance.now() - T0;
    api.firstFrameMs = performance.now();
    const t1 = performance.now();
    draw();
    syncGPU();
    setupLod(performance.now() - t1);
    buildGrid();
    api.timings.grid_ms = performance.now() - T0;
    readFilters();
    api.ready = true;
  }

  main().catch((err) => fail("could not start: " + (err && err.message ? err.message : err), err));
})();
