// danet-lens attention view: a Streamlit Components v2 module (ES module, no build step).
//
// Python (danet_app/attention_view.py) sends, once per (model, image), the image, the PAM query
// and key projections (base64: float32, or float16 for large grids), each row's log-sum-exp and the mean row (float32), the
// predicted class per grid cell and the class names/palette; the settings and pinned points
// ride along. Everything the pointer does is computed here, with no round trip:
//   row     softmax(q_i . K)               (no 1/sqrt(d), exactly like InspectionResult.rows)
//   column  exp(q_i . k_j - lse_i) for all i ("who looks here")
//   region  the mean of the rows (or columns) of the cells inside a dragged box
// then the display mode of danet_app/display_modes.py, coloured with the same lookup tables as
// danet.render.overlays. A click (no drag) sends a "pin" trigger to Python; nothing else reruns the script.
// What was drawn is exposed as data-* attributes on #danet-attention for the browser tests.
//
// The heavy per-image part (image, Q, K, lse, mean row, cell classes) arrives once per session
// and payload id and is decoded once into PAYLOADS, a module-level cache shared by every mount
// (a page switch remounts the view, the module stays). Later reruns send only the id and the
// settings; a mount that does not hold the id (a reload, an evicted entry) asks for it with the
// "need" trigger and Python sends it again.

const STORE = new WeakMap();
const PAYLOADS = new Map();                // payload id -> decoded payload (most recent last)
const KEEP_PAYLOADS = 3;
const HALF = (() => {                      // float16 bit pattern -> float32 value, all 65,536 of them
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    table[h] = exp === 0 ? sign * frac * 2 ** -24
      : exp === 31 ? (frac ? NaN : sign * Infinity)
      : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return table;
})();
const LOG_DECADES = 4.0, LOG_FLOOR = 1e-30, MAX_DISPLAY_WIDTH = 960, DRAG_PIXELS = 5, SIGN_PERCENTILE = 99;

// Class names come from the checkpoint (outside text): they enter the DOM through esc() only.
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
function esc(value) { return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]); }
function className(p, id) { return esc(p.classes[id] ?? id); }

function bytesOf(b64) {
  const text = atob(b64), out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}
function halfs(b64) {
  const raw = bytesOf(b64), bits = new Uint16Array(raw.buffer, raw.byteOffset, raw.length >> 1);
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = HALF[bits[i]];
  return out;
}
function floats(b64) { const raw = bytesOf(b64); return new Float32Array(raw.buffer, raw.byteOffset, raw.length >> 2); }

// ---- the maths (mirrors danet_app/display_modes.py) ---------------------------------------------
function softmaxInPlace(energy) {
  let peak = -Infinity;
  for (let j = 0; j < energy.length; j++) if (energy[j] > peak) peak = energy[j];
  let sum = 0;
  for (let j = 0; j < energy.length; j++) { const e = Math.exp(energy[j] - peak); energy[j] = e; sum += e; }
  for (let j = 0; j < energy.length; j++) energy[j] /= sum;
  return energy;
}
// ---- one kernel per map kind (each mirrors its danet/maps/<kind>.py; tests/test_browser_kernels.py) ----
// A kernel decodes its kind's arrays once, then fills `out` (Float64Array N) with one query's row
// ("where cell looks") or one key's column ("who looks at cell"), with no round trip to Python.
const KERNELS = {
  dot_softmax: {                             // softmax(scale q_cell . K); column exp(scale q_i . k_cell - lse_i)
    decode: (m) => {
      const arrays = m.dtype === "float32" ? floats : halfs;
      return { q: arrays(m.q), k: arrays(m.k), lse: floats(m.lse), d: m.d, scale: m.scale };
    },
    row(p, m, cell, out) {
      const { q, k, d, scale } = m, base = cell * d;
      for (let j = 0; j < p.n; j++) {
        let e = 0; const kb = j * d;
        for (let t = 0; t < d; t++) e += q[base + t] * k[kb + t];
        out[j] = e * scale;
      }
      return softmaxInPlace(out);
    },
    column(p, m, cell, out) {
      const { q, k, d, lse, scale } = m, base = cell * d;
      for (let i = 0; i < p.n; i++) {
        let e = 0; const qb = i * d;
        for (let t = 0; t < d; t++) e += q[qb + t] * k[base + t];
        out[i] = Math.exp(e * scale - lse[i]);
      }
      return out;
    },
  },
  global: {                                  // one map for every query
    decode: (m) => ({ w: floats(m.weights) }),
    row(p, m, cell, out) { for (let j = 0; j < p.n; j++) out[j] = m.w[j]; return out; },
    column(p, m, cell, out) { out.fill(m.w[cell]); return out; },
  },
  criss_cross: {                             // loops (h, w, h + w): [:h] column part, [h:] row part
    decode: (m) => ({ loops: m.loops.map(floats) }),
    row(p, m, cell, out) {                   // e_cell^T M_L ... M_1
      const { gh: h, gw: w } = p, span = h + w;
      let u = new Float64Array(p.n); u[cell] = 1;
      for (let l = m.loops.length - 1; l >= 0; l--) {
        const a = m.loops[l], v = new Float64Array(p.n);
        for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
          const weight = u[i * w + j]; if (!weight) continue;
          const base = (i * w + j) * span;
          for (let r = 0; r < h; r++) v[r * w + j] += weight * a[base + r];
          for (let c = 0; c < w; c++) v[i * w + c] += weight * a[base + h + c];
        }
        u = v;
      }
      out.set(u); return out;
    },
    column(p, m, cell, out) {                // M_L ... M_1 e_cell
      const { gh: h, gw: w } = p, span = h + w;
      let v = new Float64Array(p.n); v[cell] = 1;
      for (let l = 0; l < m.loops.length; l++) {
        const a = m.loops[l], next = new Float64Array(p.n);
        for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
          const base = (i * w + j) * span; let sum = 0;
          for (let r = 0; r < h; r++) sum += a[base + r] * v[r * w + j];
          for (let c = 0; c < w; c++) sum += a[base + h + c] * v[i * w + c];
          next[i * w + j] = sum;
        }
        v = next;
      }
      out.set(v); return out;
    },
  },
  mixture: {                                 // weights (N, K) @ components (K, N)
    decode: (m) => ({ k: m.k, w: floats(m.weights), c: floats(m.components) }),
    row(p, m, cell, out) {
      out.fill(0);
      for (let t = 0; t < m.k; t++) {
        const weight = m.w[cell * m.k + t], base = t * p.n;
        for (let j = 0; j < p.n; j++) out[j] += weight * m.c[base + j];
      }
      return out;
    },
    column(p, m, cell, out) {
      for (let i = 0; i < p.n; i++) {
        let sum = 0;
        for (let t = 0; t < m.k; t++) sum += m.w[i * m.k + t] * m.c[t * p.n + cell];
        out[i] = sum;
      }
      return out;
    },
  },
};
function rowOf(p, cell, out) { return p.kernel.row(p, p.map, cell, out); }
function columnOf(p, cell, out) { return p.kernel.column(p, p.map, cell, out); }
function massSet(values, fraction) {       // smallest set of cells holding `fraction` of the mass
  const n = values.length, order = new Uint32Array(n);
  for (let j = 0; j < n; j++) order[j] = j;
  order.sort((a, b) => (values[b] - values[a]) || (a - b));
  let total = 0;
  for (let j = 0; j < n; j++) total += values[order[j]];
  const target = fraction * total, mask = new Uint8Array(n);
  let running = 0, count = 0;
  for (; count < n; count++) {
    running += values[order[count]];
    mask[order[count]] = 1;
    if (running >= target) { count++; break; }
  }
  return { mask, count: Math.min(count, n) };
}
function percentile(values, q) {           // numpy's default (linear) percentile; 0 for no values
  if (!values.length) return 0;
  values.sort();
  const h = ((values.length - 1) * q) / 100, low = Math.floor(h), high = Math.min(low + 1, values.length - 1);
  return values[low] + (h - low) * (values[high] - values[low]);
}
function display(values, mode, baseline, fraction) {
  const n = values.length, shown = new Float64Array(n);
  let lo = 0, hi = -Infinity, cells = n, extremes = null;
  if (mode === "relative") {
    for (let j = 0; j < n; j++) { shown[j] = values[j] * n; if (shown[j] > hi) hi = shown[j]; }
  } else if (mode === "specific") {           // two-sided: each sign on its own (robust) range
    let up = 0, down = 0;
    for (let j = 0; j < n; j++) {
      shown[j] = values[j] - (typeof baseline === "number" ? baseline : baseline[j]);
      if (shown[j] > 0) up++; else if (shown[j] < 0) down++;
    }
    const positive = new Float64Array(up), negative = new Float64Array(down);
    up = 0; down = 0;
    for (let j = 0; j < n; j++) {
      if (shown[j] > 0) positive[up++] = shown[j]; else if (shown[j] < 0) negative[down++] = -shown[j];
    }
    hi = percentile(positive, SIGN_PERCENTILE); lo = -percentile(negative, SIGN_PERCENTILE);
    extremes = [down ? -negative[down - 1] : 0, up ? positive[up - 1] : 0];     // sorted by percentile()
  } else if (mode === "mass") {
    const { mask, count } = massSet(values, fraction);
    for (let j = 0; j < n; j++) { shown[j] = mask[j] ? values[j] : NaN; if (values[j] > hi) hi = values[j]; }
    cells = count;
  } else if (mode === "log") {
    let low = Infinity;
    for (let j = 0; j < n; j++) {
      shown[j] = Math.log10(Math.max(values[j], LOG_FLOOR));
      if (shown[j] > hi) hi = shown[j];
      if (shown[j] < low) low = shown[j];
    }
    lo = Math.max(low, hi - LOG_DECADES);
  } else {
    for (let j = 0; j < n; j++) { shown[j] = values[j]; if (values[j] > hi) hi = values[j]; }
  }
  return { shown, lo, hi, cells, extremes };
}
function pointStatistics(p, values, x, y) {
  let entropy = 0;
  const mass = new Float64Array(Math.max(p.classes.length, 1) + 1);
  for (let j = 0; j < values.length; j++) {
    const v = values[j];
    if (v > 0) entropy -= v * Math.log2(v);
    const c = p.cellClass[j];
    if (c < p.classes.length) mass[c] += v;
  }
  let top = 0;
  for (let c = 1; c < p.classes.length; c++) if (mass[c] > mass[top]) top = c;
  const cls = p.pixelClass ? p.pixelClass[y * p.W + x] : p.cellClass[Math.min(Math.floor((y * p.gh) / p.H), p.gh - 1) * p.gw + Math.min(Math.floor((x * p.gw) / p.W), p.gw - 1)];
  return { entropy, fraction: p.n > 1 ? entropy / Math.log2(p.n) : 0, cls, same: cls < p.classes.length ? mass[cls] : 0, top, topShare: mass[top] };
}
function checksum(values) {
  let sum = 0;
  for (let j = 0; j < values.length; j++) {
    const v = values[j];
    if (Number.isFinite(v)) sum += v * (0.5 + ((j * 7919) % 1009) / 1009);
  }
  return sum;
}
function argmax(values) {
  let best = 0;
  for (let j = 1; j < values.length; j++) if (values[j] > values[best]) best = j;
  return best;
}
// where v sits on a map's colour bar (0-1); a two-sided map puts 0 at the centre and scales each
// sign on its own range (danet_app/display_modes.colour_index)
function barFraction(v, lo, hi, twoSided) {
  if (twoSided) return v >= 0 ? 0.5 + 0.5 * (hi > 0 ? Math.min(v / hi, 1) : 0) : 0.5 - 0.5 * (lo < 0 ? Math.min(v / lo, 1) : 0);
  return hi > lo ? Math.min(Math.max((v - lo) / (hi - lo), 0), 1) : 0;
}
function opaqueShare(shown, lo, hi, twoSided) {   // cells drawn at full colour (past the fade-in)
  let count = 0, finite = 0;
  const neutral = twoSided ? 127.5 : 0;
  for (let j = 0; j < shown.length; j++) {
    const v = shown[j];
    if (v !== v) continue;
    finite += 1;
    const i = Math.min(Math.floor(barFraction(v, lo, hi, twoSided) * 256), 255);
    if (Math.abs(i - neutral) >= FADE_BINS) count += 1;
  }
  return finite ? count / finite : 0;
}

// ---- painting -----------------------------------------------------------------------------------
// nearest: one pixel per grid cell on a grid-size canvas, scaled up by drawImage with smoothing off
// (the browser repeats cells; nothing per display pixel in JS). bilinear: the values are
// interpolated (torch's F.interpolate, with the model's align_corners) before colouring, as the
// app's PNGs do, separably (along x once per grid row, then along y) into a reused buffer; colours
// are written as packed 32-bit pixels. NaN cells (outside a mass set) stay transparent.
// Buffers live on `cache` (one per canvas) and are re-allocated only when the size changes.
const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
// Colours fade in over the first FADE_BINS bins away from the map's neutral value (the low end of
// a sequential map, the centre of the diverging one), so cells with (next to) no attention leave
// the image untinted; the colour bar stays opaque.
const FADE_BINS = 24;
function packedLut(lut, neutral = 0) {     // 256 RGB entries -> 256 RGBA words
  const out = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const r = lut[3 * i], g = lut[3 * i + 1], b = lut[3 * i + 2];
    const a = Math.round(255 * Math.min(1, Math.abs(i - neutral) / FADE_BINS));
    out[i] = LITTLE ? ((a << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | a) >>> 0;
  }
  return out;
}
function sampler(size, out, alignCorners) {
  const i0 = new Int32Array(out), i1 = new Int32Array(out), w = new Float32Array(out);
  for (let o = 0; o < out; o++) {
    const src = alignCorners ? (out > 1 ? (o * (size - 1)) / (out - 1) : 0) : Math.max(((o + 0.5) * size) / out - 0.5, 0);
    const a = Math.min(Math.floor(src), size - 1);
    i0[o] = a; i1[o] = Math.min(a + 1, size - 1); w[o] = src - a;
  }
  return { i0, i1, w };
}
function buffers(cache, gh, gw, width, height, bilinear, alignCorners) {
  const w = bilinear ? width : gw, h = bilinear ? height : gh;
  const key = `${gh}x${gw}:${w}x${h}:${alignCorners}`;
  if (cache.key !== key) {
    cache.key = key;
    cache.heat = new ImageData(w, h);
    cache.words = new Uint32Array(cache.heat.data.buffer);
    cache.canvas = new OffscreenCanvas(w, h);
    cache.ctx = cache.canvas.getContext("2d");
    if (bilinear) {
      cache.sx = sampler(gw, w, alignCorners); cache.sy = sampler(gh, h, alignCorners);
      cache.across = new Float32Array(gh * w);                 // rows interpolated along x
    }
  }
  return cache;
}
function paintMap(ctx, image, shown, lo, hi, p, lut, opacity, bilinear, width, height, cache, twoSided = false) {
  const gh = p.gh, gw = p.gw, b = buffers(cache, gh, gw, width, height, bilinear, p.alignCorners);
  // one-sided: i = (v - lo) * 256 / (hi - lo); two-sided: i = 128 + v * 128 / hi above 0, 128 + v * 128 / -lo below
  const words = b.words, scale = hi > lo ? 256 / (hi - lo) : 0;
  const up = hi > 0 ? 128 / hi : 0, down = lo < 0 ? 128 / -lo : 0;
  const index = twoSided ? (v) => Math.floor(128 + v * (v >= 0 ? up : down)) : (v) => Math.floor((v - lo) * scale);
  if (!bilinear) {
    for (let j = 0; j < gh * gw; j++) {
      const v = shown[j];
      if (v !== v) { words[j] = 0; continue; }                 // NaN: transparent
      const i = index(v);
      words[j] = lut[i < 0 ? 0 : i > 255 ? 255 : i];
    }
  } else {
    const { sx, sy, across } = b;
    for (let r = 0; r < gh; r++) {
      const base = r * gw, out = r * width;
      for (let x = 0; x < width; x++) {
        const wx = sx.w[x];
        across[out + x] = shown[base + sx.i0[x]] * (1 - wx) + shown[base + sx.i1[x]] * wx;
      }
    }
    let o = 0;
    for (let y = 0; y < height; y++) {
      const t = sy.i0[y] * width, u = sy.i1[y] * width, wy = sy.w[y];
      for (let x = 0; x < width; x++, o++) {
        const v = across[t + x] * (1 - wy) + across[u + x] * wy;
        if (v !== v) { words[o] = 0; continue; }
        const i = index(v);
        words[o] = lut[i < 0 ? 0 : i > 255 ? 255 : i];
      }
    }
  }
  b.ctx.putImageData(b.heat, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.globalAlpha = 1;
  ctx.drawImage(image, 0, 0, width, height);
  ctx.globalAlpha = opacity;
  ctx.imageSmoothingEnabled = bilinear;                        // nearest: the cells as they are
  ctx.drawImage(b.canvas, 0, 0, width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.globalAlpha = 1;
}
function paintBar(canvas, lut) {
  const ctx = canvas.getContext("2d"), bar = ctx.createImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    bar.data.set([lut[3 * i], lut[3 * i + 1], lut[3 * i + 2], 255], 4 * i);
  }
  canvas.width = 256; canvas.height = 1;
  ctx.putImageData(bar, 0, 0);
}
function format(v) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}
function marker(ctx, x, y, colour, label, radius) {
  ctx.beginPath(); ctx.arc(x, y, radius, 0, 2 * Math.PI);
  ctx.lineWidth = Math.max(2, radius / 3); ctx.strokeStyle = "black"; ctx.stroke();
  ctx.lineWidth = Math.max(1, radius / 5); ctx.strokeStyle = colour; ctx.stroke();
  if (label) {
    ctx.font = `bold ${Math.round(radius * 1.6)}px sans-serif`;
    ctx.lineWidth = 3; ctx.strokeStyle = "black"; ctx.strokeText(label, x + radius + 2, y - radius);
    ctx.fillStyle = colour; ctx.fillText(label, x + radius + 2, y - radius);
  }
}

// ---- the view -----------------------------------------------------------------------------------
function mount(root) {
  const $ = (id) => root.querySelector(`#${id}`);
  const view = {
    root, el: $("danet-attention"), input: $("input-canvas"), map: $("map-canvas"), bar: $("bar-canvas"),
    barLo: $("bar-lo"), barHi: $("bar-hi"), barMid: $("bar-mid"), barUnit: $("bar-unit"), barMark: $("bar-mark"),
    readout: $("readout"), hint: $("map-title"), pinned: $("pinned"),
    payload: null, image: null, settings: {}, query: null, region: null, drag: null, pending: false,
    frames: 0, lastMap: null, hover: null, moveAt: null, mapCache: {}, localPins: [], asked: null,
  };
  const cellAt = (canvas, event) => {
    const p = view.payload, rect = canvas.getBoundingClientRect();
    if (!p || rect.width === 0) return null;
    const x = Math.min(Math.max(Math.floor(((event.clientX - rect.left) / rect.width) * p.W), 0), p.W - 1);
    const y = Math.min(Math.max(Math.floor(((event.clientY - rect.top) / rect.height) * p.H), 0), p.H - 1);
    return { x, y, row: Math.min(Math.floor((y * p.gh) / p.H), p.gh - 1), col: Math.min(Math.floor((x * p.gw) / p.W), p.gw - 1) };
  };
  // over the image the arrow keys and Esc act on the view (no click needed first)
  view.input.addEventListener("pointerenter", () => view.el.focus({ preventScroll: true }));
  view.input.addEventListener("pointerdown", (event) => {
    const at = cellAt(view.input, event);
    if (!at) return;
    view.drag = { start: at, x: event.clientX, y: event.clientY, moved: false };
    view.input.setPointerCapture(event.pointerId);
    view.el.focus({ preventScroll: true });
  });
  view.input.addEventListener("pointermove", (event) => {
    const at = cellAt(view.input, event);
    if (!at) return;
    if (view.drag) {
      if (Math.hypot(event.clientX - view.drag.x, event.clientY - view.drag.y) > DRAG_PIXELS) view.drag.moved = true;
      if (view.drag.moved) { view.dragBox = [view.drag.start.row, view.drag.start.col, at.row, at.col]; schedule(view, "marks"); }
      return;
    }
    if (view.region) return;                                  // a box holds the map until Esc
    if (!view.query || view.query.cell !== at.row * view.payload.gw + at.col) {
      view.query = { ...at, cell: at.row * view.payload.gw + at.col };
      if (view.moveAt === null) view.moveAt = event.timeStamp;  // the oldest move not yet painted
      schedule(view, "map");
    }
  });
  view.input.addEventListener("pointerup", (event) => {
    const drag = view.drag, at = cellAt(view.input, event);
    view.drag = null; view.dragBox = null;
    if (!drag || !at) return;
    if (drag.moved) {
      view.region = [drag.start.row, drag.start.col, at.row, at.col];
      schedule(view, "map");
    } else {
      view.region = null;
      view.query = { ...at, cell: at.row * view.payload.gw + at.col };
      schedule(view, "map");
      pinNow(view, at.x, at.y);
    }
  });
  view.map.addEventListener("pointermove", (event) => {
    const at = cellAt(view.map, event);
    if (!at || !view.lastMap) return;
    view.hover = at; writeReadout(view);
  });
  view.map.addEventListener("pointerleave", () => { view.hover = null; writeReadout(view); });
  view.el.addEventListener("keydown", (event) => {
    const p = view.payload;
    if (!p) return;
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (event.key === "Escape") {
      view.query = null; view.region = null; schedule(view, "map"); event.preventDefault(); return;
    }
    if (event.key === "Enter" && view.query) {
      pinNow(view, view.query.x, view.query.y);
      event.preventDefault(); return;
    }
    if (!(event.key in moves)) return;
    event.preventDefault();
    const [dr, dc] = moves[event.key];
    const q = view.query || { row: p.gh >> 1, col: p.gw >> 1 };
    const row = Math.min(Math.max(q.row + (view.query ? dr : 0), 0), p.gh - 1);
    const col = Math.min(Math.max(q.col + (view.query ? dc : 0), 0), p.gw - 1);
    // the centre pixel of the cell, so a pin from the keyboard lands in the cell it shows
    const x = Math.min(Math.floor(((col + 0.5) * p.W) / p.gw), p.W - 1), y = Math.min(Math.floor(((row + 0.5) * p.H) / p.gh), p.H - 1);
    view.region = null;
    view.query = { x, y, row, col, cell: row * p.gw + col };
    schedule(view, "map");
  });
  return view;
}

// A pin is drawn here at once (its map, beside the others) and sent to Python, whose statistics
// and authoritative list of points arrive with the fragment's rerun (then localPins is dropped).
function pinNow(view, x, y) {
  view.pinAt = performance.now();
  view.localPins.push([x, y]);
  view.setTrigger("pin", { x, y, nonce: Date.now() + Math.random() });
  schedule(view, "marks");
  paintPinned(view);
  view.el.dataset.pinDrawMs = (performance.now() - view.pinAt).toFixed(2);
}
function pinnedPoints(view) {
  const points = [...(view.settings.pinned || [])];
  for (const q of view.localPins) if (!points.some(([x, y]) => x === q[0] && y === q[1])) points.push(q);
  return points.slice(-8);
}

function schedule(view, what) {
  view.dirty = view.dirty === "map" ? "map" : what;
  if (view.pending) return;
  view.pending = true;
  requestAnimationFrame(() => { view.pending = false; const d = view.dirty; view.dirty = null; paint(view, d); });
}

function currentMap(view) {
  const p = view.payload, s = view.settings, kind = s.view === "column" ? "column" : "row";
  const start = performance.now();
  let values = null, label = "", baseline = kind === "column" ? 1 / p.n : p.meanRow, cells = [];
  if (view.region) {
    const [r0, c0, r1, c1] = view.region;
    for (let r = Math.min(r0, r1); r <= Math.max(r0, r1); r++)
      for (let c = Math.min(c0, c1); c <= Math.max(c0, c1); c++) cells.push(r * p.gw + c);
    values = new Float64Array(p.n);
    const one = new Float64Array(p.n);
    for (const cell of cells) {
      (kind === "column" ? columnOf : rowOf)(p, cell, one);
      for (let j = 0; j < p.n; j++) values[j] += one[j];
    }
    for (let j = 0; j < p.n; j++) values[j] /= cells.length;
    label = `region of ${cells.length} cells (${Math.min(r0, r1)},${Math.min(c0, c1)})–(${Math.max(r0, r1)},${Math.max(c0, c1)})`;
  } else if (view.query) {
    values = (kind === "column" ? columnOf : rowOf)(p, view.query.cell, new Float64Array(p.n));
    label = `cell (${view.query.row}, ${view.query.col})`;
  }
  return { values, kind: view.region ? `region-${kind}` : kind, label, baseline, ms: performance.now() - start };
}

function paint(view, what) {
  const p = view.payload, s = view.settings, el = view.el;
  if (!p || !view.image) return;
  const ictx = view.input.getContext("2d"), mctx = view.map.getContext("2d");
  const W = view.input.width, H = view.input.height, radius = Math.max(5, Math.round(W / 70));
  // the input with pinned points, the query and any box being dragged
  ictx.drawImage(view.image, 0, 0, W, H);
  pinnedPoints(view).forEach(([x, y], i) => marker(ictx, ((x + 0.5) * W) / p.W, ((y + 0.5) * H) / p.H, s.colours[i % s.colours.length], String(i + 1), radius));
  const box = view.dragBox || view.region;
  if (box) {
    const [r0, c0, r1, c1] = box;
    ictx.lineWidth = 2; ictx.strokeStyle = "white"; ictx.setLineDash([6, 4]);
    ictx.strokeRect((Math.min(c0, c1) * W) / p.gw, (Math.min(r0, r1) * H) / p.gh,
      ((Math.abs(c1 - c0) + 1) * W) / p.gw, ((Math.abs(r1 - r0) + 1) * H) / p.gh);
    ictx.setLineDash([]);
  }
  if (view.query && !view.region) marker(ictx, ((view.query.col + 0.5) * W) / p.gw, ((view.query.row + 0.5) * H) / p.gh, "white", "", radius);
  if (what === "marks") return;

  const paintStart = performance.now();
  const map = currentMap(view);
  if (!map.values) {
    mctx.drawImage(view.image, 0, 0, W, H);
    view.lastMap = null;
    Object.assign(el.dataset, { kind: "none", queryCell: "", argmax: "", checksum: "", displayChecksum: "" });
    view.hint.textContent = "Move the pointer over the left image: its attention shows here.";
    writeReadout(view);
    return;
  }
  const shown = display(map.values, s.mode, map.baseline, s.fraction), twoSided = s.mode === "specific";
  const lut = twoSided ? p.lutDiverging : view.lut;
  paintMap(mctx, view.image, shown.shown, shown.lo, shown.hi, p, lut.packed, s.opacity, s.upsampling === "bilinear", W, H, view.mapCache, twoSided);
  const peak = argmax(map.values);
  mctx.strokeStyle = "white"; mctx.lineWidth = 2;
  mctx.strokeRect(((peak % p.gw) * W) / p.gw, (Math.floor(peak / p.gw) * H) / p.gh, W / p.gw, H / p.gh);
  if (view.barLut !== lut) { paintBar(view.bar, lut.bytes); view.barLut = lut; }
  view.barLo.textContent = format(shown.lo);
  view.barHi.textContent = format(shown.hi);
  view.barMid.style.display = twoSided ? "block" : "none";
  view.barUnit.textContent = s.unit + (s.mode === "mass" ? ` (${Math.round(s.fraction * 100)}% of the mass in ${shown.cells} of ${p.n} cells)` : "")
    + (twoSided ? ` · each sign on its own scale, to its ${SIGN_PERCENTILE}th percentile: red 0 to ${format(shown.hi)} `
      + `(highest ${format(shown.extremes[1])}), blue 0 to ${format(shown.lo)} (lowest ${format(shown.extremes[0])})` : "");
  view.lastMap = { ...map, shown };
  view.frames += 1;
  Object.assign(el.dataset, {
    kind: map.kind, mode: s.mode, view: s.view,
    queryCell: view.region ? "" : `${view.query.row},${view.query.col}`,
    region: view.region ? view.region.join(",") : "",
    argmax: `${Math.floor(peak / p.gw)},${peak % p.gw}`,
    checksum: checksum(map.values).toPrecision(10), displayChecksum: checksum(shown.shown).toPrecision(10),
    max: map.values[peak].toPrecision(8), vmin: shown.lo.toPrecision(8), vmax: shown.hi.toPrecision(8),
    massCells: String(shown.cells), computeMs: map.ms.toFixed(2), frames: String(view.frames),
    opaqueShare: opaqueShare(shown.shown, shown.lo, shown.hi, twoSided).toFixed(5),
    paintMs: (performance.now() - paintStart).toFixed(2),
  });
  // pointer event -> painted map, measured in the page (no test-driver polling in it); the next
  // animation frame starts once the painted frame was handed to the compositor
  if (view.moveAt !== null) {
    const moveAt = view.moveAt, cell = el.dataset.queryCell;
    view.moveAt = null;
    el.dataset.latencyMs = (performance.now() - moveAt).toFixed(2);
    requestAnimationFrame(() => { el.dataset.frameMs = (performance.now() - moveAt).toFixed(2); el.dataset.frameCell = cell; });
  }
  const name = map.kind.startsWith("region") ? "Mean attention of a" : map.kind === "column" ? "Who looks at" : "Where";
  view.hint.textContent = map.kind === "row" ? `Where ${map.label} looks` : `${name} ${map.label}` + (map.kind === "column" ? ": every query's weight on it" : "");
  writeReadout(view);
}

function writeReadout(view) {
  const p = view.payload, m = view.lastMap, el = view.el;
  if (!p) return;
  const parts = [];
  if (view.query && !view.region) {
    const cls = p.cellClass[view.query.cell];
    parts.push(`query <b>cell (${view.query.row}, ${view.query.col})</b>, pixel (${view.query.x}, ${view.query.y}), predicted <b>${className(p, cls)}</b>`);
  } else if (m) parts.push(`<b>${m.label}</b> (Esc to release)`);
  let value = null;
  if (m) {
    const at = view.hover || (view.query && !view.region ? view.query : null);
    if (at) {
      const cell = at.row * p.gw + at.col;
      value = m.shown.shown[cell];
      const where = view.hover ? `under the cursor, cell (${at.row}, ${at.col}) ${className(p, p.cellClass[cell])}` : "at the query itself";
      // the weight itself only where the shown value is something else (raw mode shows the weight)
      const weight = view.settings.mode === "raw" ? "" : ` (weight ${format(m.values[cell])})`;
      parts.push(`${where}: <b>${format(value)}</b> ${esc(view.settings.unit)}${weight}`);
      const f = barFraction(value, m.shown.lo, m.shown.hi, view.settings.mode === "specific");
      view.barMark.style.left = `${(Number.isFinite(value) ? f : 0) * 100}%`;
      view.barMark.style.display = Number.isFinite(value) ? "block" : "none";
    } else view.barMark.style.display = "none";
    parts.push(`computed in ${m.ms.toFixed(1)} ms`);
  } else {
    view.barMark.style.display = "none";
    parts.push("Move the pointer over the image · drag a box for a region · click (or Enter) pins a point · arrows move one cell · Esc clears");
  }
  el.dataset.value = value === null ? "" : String(value);
  view.readout.innerHTML = parts.join(" · ");
}

// pinned points side by side: each map in the current mode with its own scale and colour bar
function paintPinned(view) {
  const p = view.payload, s = view.settings, host = view.pinned;
  if (!p || !view.image) return;
  host.replaceChildren();
  const points = pinnedPoints(view);
  view.el.dataset.pinnedCount = String(points.length);
  view.pinCaches = view.pinCaches || [];
  const checks = [], stats = [];
  points.forEach(([x, y], i) => {
    const row = Math.min(Math.floor((y * p.gh) / p.H), p.gh - 1), col = Math.min(Math.floor((x * p.gw) / p.W), p.gw - 1);
    const cell = row * p.gw + col;
    const values = s.view === "column" ? columnOf(p, cell, new Float64Array(p.n)) : rowOf(p, cell, new Float64Array(p.n));
    const shown = display(values, s.mode, s.view === "column" ? 1 / p.n : p.meanRow, s.fraction);
    checks.push(checksum(values).toPrecision(8));
    const figure = document.createElement("figure"), canvas = document.createElement("canvas");
    const width = Math.min(p.W, 320), height = Math.max(1, Math.round((p.H * width) / p.W));
    canvas.width = width; canvas.height = height;
    const lut = s.mode === "specific" ? p.lutDiverging : view.lut;
    view.pinCaches[i] = view.pinCaches[i] || {};
    paintMap(canvas.getContext("2d"), view.image, shown.shown, shown.lo, shown.hi, p, lut.packed, s.opacity, s.upsampling === "bilinear", width, height, view.pinCaches[i], s.mode === "specific");
    marker(canvas.getContext("2d"), ((x + 0.5) * width) / p.W, ((y + 0.5) * height) / p.H, s.colours[i % s.colours.length], String(i + 1), 5);
    const bar = document.createElement("canvas"); bar.className = "bar"; paintBar(bar, lut.bytes);
    const caption = document.createElement("figcaption");
    caption.innerHTML = `<span>${format(shown.lo)}</span>` + (s.mode === "specific" ? "<span>0</span>" : "") + `<span>${format(shown.hi)}</span>`;
    // the statistics at once (Python's cards below follow with the rerun); a row only: a column
    // is not a distribution over where one query looks
    const rowValues = s.view === "column" ? rowOf(p, cell, new Float64Array(p.n)) : values;
    const st = pointStatistics(p, rowValues, x, y);
    stats.push(`${st.entropy.toFixed(4)},${st.same.toFixed(5)},${st.cls},${st.top}`);
    const about = document.createElement("div");
    about.className = "stats";
    about.innerHTML = `<b>${i + 1}</b> · (${x}, ${y}) · <b>${className(p, st.cls)}</b><br>entropy ${st.entropy.toFixed(2)} bits (${Math.round(st.fraction * 100)}%) · same-class ${(st.same * 100).toFixed(1)}% · top ${className(p, st.top)} ${Math.round(st.topShare * 100)}%`;
    figure.append(canvas, bar, caption, about);
    host.append(figure);
  });
  view.el.dataset.pinnedChecksums = checks.join(";");
  view.el.dataset.pinnedStats = stats.join(";");
}

function lutOf(bytes, neutral = 0) { return { bytes, packed: packedLut(bytes, neutral) }; }

function decode(data) {                    // the heavy part, once per payload id (not per mount)
  const t0 = performance.now(), n = data.gh * data.gw;
  const payload = {
    id: data.id, W: data.W, H: data.H, gh: data.gh, gw: data.gw, n, alignCorners: !!data.align_corners,
    kind: data.map.kind, kernel: KERNELS[data.map.kind], map: KERNELS[data.map.kind].decode(data.map),
    meanRow: floats(data.map.mean_row), mapTitle: data.map.title, flags: data.map.flags,
    cellClass: data.cell_classes_wide ? new Uint16Array(bytesOf(data.cell_classes).buffer) : bytesOf(data.cell_classes),
    classes: data.classes, lutDiverging: lutOf(bytesOf(data.lut_diverging), 127.5), image: null, pixelClass: null,
  };
  const image = new Image(), labels = new Image();
  const shown = new Promise((resolve) => {
    image.onload = () => { payload.image = image; payload.decodeMs = performance.now() - t0; resolve(); };
    image.onerror = () => resolve();
  });
  // the predicted class of every pixel (lossless PNG: R + 256 G), for a pin's statistics
  let labelled;
  const labelsDone = new Promise((resolve) => { labelled = resolve; });
  labels.onerror = () => labelled();
  labels.onload = () => {
    const canvas = new OffscreenCanvas(data.W, data.H), ctx = canvas.getContext("2d");
    ctx.drawImage(labels, 0, 0);
    const rgba = ctx.getImageData(0, 0, data.W, data.H).data, ids = new Uint16Array(data.W * data.H);
    for (let i = 0; i < ids.length; i++) ids[i] = rgba[4 * i] + 256 * rgba[4 * i + 1];
    payload.pixelClass = ids;
    labelled();
  };
  if (data.pixel_classes) labels.src = data.pixel_classes; else labelled();
  payload.loaded = Promise.all([shown, labelsDone]).then(() => payload);
  image.src = data.image;
  return payload;
}

function remember(id, payload) {
  PAYLOADS.delete(id);
  PAYLOADS.set(id, payload);
  while (PAYLOADS.size > KEEP_PAYLOADS) PAYLOADS.delete(PAYLOADS.keys().next().value);
}

function attach(view, p) {                 // show payload p in this view (a new image, or a remount)
  view.payload = p; view.image = null;
  view.query = null; view.region = null; view.lastMap = null; view.localPins = [];
  const el = view.el;
  const width = Math.min(p.W, MAX_DISPLAY_WIDTH), height = Math.max(1, Math.round((p.H * width) / p.W));
  for (const canvas of [view.input, view.map]) { canvas.width = width; canvas.height = height; canvas.style.aspectRatio = `${p.W} / ${p.H}`; }
  Object.assign(el.dataset, { ready: "0", payloadId: p.id, cells: String(p.n), grid: `${p.gh},${p.gw}` });
  p.loaded.then(() => {
    if (view.payload !== p || !p.image) return;
    view.image = p.image; el.dataset.ready = "1";
    el.dataset.decodeMs = (p.decodeMs || 0).toFixed(1);
    const q = view.settings.query;
    if (q && !view.query) {                                  // restore the query after a rerun
      const row = Math.min(Math.floor((q[1] * p.gh) / p.H), p.gh - 1), col = Math.min(Math.floor((q[0] * p.gw) / p.W), p.gw - 1);
      view.query = { x: q[0], y: q[1], row, col, cell: row * p.gw + col };
    }
    schedule(view, "map"); paintPinned(view);
  });
}

function update(view, data) {
  const s = data.settings || {}, el = view.el;
  if (data.payload && !PAYLOADS.has(data.id)) remember(data.id, decode(data.payload));
  el.dataset.payloadBytes = data.payload ? "sent" : "cached";
  view.settings = {
    mode: s.mode || "raw", view: s.view || "row", unit: s.unit || "", fraction: s.fraction || 0.9, opacity: s.opacity ?? 0.6,
    upsampling: s.upsampling || "bilinear", pinned: s.pinned || [], colours: s.colours || ["#e69f00"], query: s.query,
  };
  if (s.lut && s.lut !== view.lutText) { view.lut = lutOf(bytesOf(s.lut)); view.lutText = s.lut; }
  view.localPins = [];                                       // Python's list of points is the truth now
  if (view.pinAt !== undefined) { el.dataset.pinRoundTripMs = (performance.now() - view.pinAt).toFixed(1); view.pinAt = undefined; }
  view.updates = (view.updates || 0) + 1;
  Object.assign(el.dataset, { updates: String(view.updates), mode: view.settings.mode, view: view.settings.view });
  const p = PAYLOADS.get(data.id);
  if (!p) {                                                  // e.g. a reload: ask Python for it, once
    el.dataset.ready = "0";
    if (view.asked !== data.id) { view.asked = data.id; view.setTrigger("need", data.id); }
    return;
  }
  remember(data.id, p);
  if (view.payload !== p) { attach(view, p); return; }
  if (view.image) { schedule(view, "map"); paintPinned(view); }
}

export { KERNELS, decode, rowOf, columnOf };

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  // Streamlit calls this again whenever the data change, on the same DOM: keep one view per
  // mounted element (decoded arrays, listeners, query) and only update it.
  let view = STORE.get(parentElement);
  if (!view || !view.el.isConnected || view.el !== parentElement.querySelector("#danet-attention")) {
    view = mount(parentElement);
    STORE.set(parentElement, view);
  }
  view.setTrigger = setTriggerValue;
  if (data) update(view, data);
  return undefined;        // nothing to tear down: listeners live on elements that go with the view
}
