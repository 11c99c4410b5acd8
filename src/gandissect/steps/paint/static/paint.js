// GANPaint page: keeps the stack of strokes and sends all of them with every request to POST /api/generate.
//
// Each stroke is one intervention with its own mask: a transparent 512x512 offscreen canvas on which the brush
// paints opaque pixels, sent as a PNG data URL. Undo, redo and reset only move strokes between the stack and the
// redo list and ask the server again; the server keeps no state. Responses that arrive after a newer request was
// sent are dropped (a request counter). document.body.dataset.busy is "1" while the latest request is in flight and
// "0" once its image is shown (or its error reported), for tests and scripts.
"use strict";

(function () {
  const MASK_SIZE = 512;
  const MAX_SEED = 2147483647;
  const CATEGORY_ORDER = ["object", "part", "stuff"];
  const STROKE_COLORS = { remove: "rgb(255, 48, 96)", draw: "rgb(32, 224, 128)" };

  const $ = (id) => document.getElementById(id);
  const ui = {
    image: $("image"), original: $("original"), segmentation: $("segmentation"), canvas: $("canvas"),
    concepts: $("concepts"), remove: $("action-remove"), draw: $("action-draw"), fine: $("fine"),
    fineLabel: $("fine-label"), brush: $("brush"), brushSize: $("brush-size"), undo: $("undo"), redo: $("redo"),
    reset: $("reset"), newScene: $("new-scene"), seed: $("seed"), seedForm: $("seed-form"), overlay: $("overlay"),
    showStrokes: $("show-strokes"), download: $("download"), status: $("status"), count: $("strokes-count"),
    caption: $("original-caption"),
    strength: { low: $("strength-low"), medium: $("strength-medium"), high: $("strength-high") },
  };
  const view = ui.canvas.getContext("2d");
  const scratch = document.createElement("canvas");
  scratch.width = scratch.height = MASK_SIZE;

  const state = {
    seed: null,
    byLayer: {},          // layer -> {name -> concept entry of GET /api/concepts}
    defaultLayer: null,
    fineLayer: null,      // the finest non-default layer, if the server has one
    concept: null,
    action: "remove",
    strength: "high",
    fine: false,
    brush: Number(ui.brush.value),
    strokes: [],          // what is applied, oldest first
    undone: [],           // strokes undone, most recent last (redo takes from the end)
    current: null,        // the stroke being painted
    hover: null,          // brush position for the cursor preview
    requests: 0,          // number of requests sent; only the answer to the latest is shown
  };

  // ----- requests -----------------------------------------------------------------------------------------------

  const api = gandissectApi;  // api.js

  function intervention(stroke) {
    return { concept: stroke.concept, action: stroke.action, strength: stroke.strength, layer: stroke.layer,
             mask: stroke.mask };
  }

  async function render() {
    const id = ++state.requests;
    document.body.dataset.busy = "1";
    const strokes = state.strokes.slice();
    const body = { seed: state.seed, interventions: strokes.map(intervention), segmentation: true };
    let answer;
    try {
      answer = await api("/api/generate", body);
    } catch (err) {
      if (id !== state.requests) return;
      showError(err.message);
      document.body.dataset.busy = "0";
      return;
    }
    if (id !== state.requests) return; // a newer request is on its way; its answer wins
    if (await show(answer, strokes, id)) document.body.dataset.busy = "0";
  }

  function loaded(img, src) {
    if (img.getAttribute("src") === src) return Promise.resolve();
    img.src = src;
    return img.decode ? img.decode().catch(() => undefined) : Promise.resolve();
  }

  // Shows an answer; false when a newer request was sent while its images were decoding (that one will show).
  async function show(answer, strokes, id) {
    await Promise.all([
      loaded(ui.image, answer.image),
      loaded(ui.original, answer.original),
      answer.segmentation ? loaded(ui.segmentation, answer.segmentation) : Promise.resolve(),
    ]);
    if (id !== state.requests) return false;
    ui.download.href = answer.image;
    ui.download.download = `ganpaint-seed${answer.seed}${strokes.length ? `-${strokes.length}strokes` : ""}.png`;
    ui.caption.textContent = `original (seed ${answer.seed})`;
    document.body.dataset.seed = String(answer.seed);
    document.body.dataset.strokes = String(strokes.length);
    delete document.body.dataset.error;
    const last = answer.shares && answer.shares.length ? answer.shares[answer.shares.length - 1] : null;
    setStatus(last ? shareText(last, strokes[strokes.length - 1])
      : `seed ${answer.seed}: pick a concept and paint on the scene`, last);
    return true;
  }

  function percent(value) {
    return `${Math.round(value * 100)}%`;
  }

  function shareText(share, stroke) {
    const what = `${share.action} ${stroke ? stroke.strength : ""} (${share.units} units at ${share.layer})`;
    if (share.before === null || share.before === undefined) {
      return `${share.concept}: the stroke is too small to cover a pixel; ${what}`;
    }
    return `${share.concept}: ${percent(share.before)} -> ${percent(share.after)} in the painted area; ${what}`;
  }

  function setStatus(text, share) {
    ui.status.textContent = text;
    ui.status.classList.remove("error");
    if (share && share.before !== null && share.before !== undefined) {
      ui.status.dataset.before = String(share.before);
      ui.status.dataset.after = String(share.after);
    } else {
      delete ui.status.dataset.before;
      delete ui.status.dataset.after;
    }
  }

  function showError(message) {
    ui.status.textContent = `error: ${message}`;
    ui.status.classList.add("error");
    delete ui.status.dataset.before;
    delete ui.status.dataset.after;
    document.body.dataset.error = "1";
  }

  // ----- the stroke stack ---------------------------------------------------------------------------------------

  function updateStack() {
    ui.undo.disabled = state.strokes.length === 0;
    ui.redo.disabled = state.undone.length === 0;
    ui.reset.disabled = state.strokes.length === 0 && state.undone.length === 0;
    const n = state.strokes.length;
    ui.count.textContent = n === 0 ? "no strokes" : `${n} stroke${n === 1 ? "" : "s"}` +
      (state.undone.length ? `, ${state.undone.length} to redo` : "");
    drawView();
  }

  function undo() {
    if (!state.strokes.length) return;
    state.undone.push(state.strokes.pop());
    updateStack();
    render();
  }

  function redo() {
    if (!state.undone.length) return;
    state.strokes.push(state.undone.pop());
    updateStack();
    render();
  }

  function reset() {
    if (!state.strokes.length && !state.undone.length) return;
    state.strokes = [];
    state.undone = [];
    updateStack();
    render();
  }

  function setSeed(value) {
    const text = String(value).trim();
    if (text === "") return;
    const seed = Number(text);
    if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
      showError(`seed ${text}: expected an integer from 0 to ${MAX_SEED}`);
      return;
    }
    ui.seed.value = String(seed);
    if (seed === state.seed) return;
    state.seed = seed;
    state.strokes = [];
    state.undone = [];
    const url = new URL(window.location.href);
    url.searchParams.set("seed", String(seed));
    window.history.replaceState(null, "", url);
    updateStack();
    render();
  }

  // ----- painting -----------------------------------------------------------------------------------------------

  function point(event) {
    const rect = ui.canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * MASK_SIZE / rect.width, (event.clientY - rect.top) * MASK_SIZE / rect.height];
  }

  function pathOn(ctx, points, width, color) {
    ctx.strokeStyle = ctx.fillStyle = color;
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], width / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (let i = 1; i < points.length; i++) ctx.lineTo(points[i][0], points[i][1]);
    ctx.stroke();
  }

  function startStroke(event) {
    const mask = document.createElement("canvas");
    mask.width = mask.height = MASK_SIZE;
    const layer = state.fine && state.fineLayer ? state.fineLayer : state.defaultLayer;
    state.current = { concept: state.concept, action: state.action, strength: state.strength, layer,
                      width: state.brush, points: [point(event)], canvas: mask, pointer: event.pointerId, mask: null };
    pathOn(mask.getContext("2d"), state.current.points, state.current.width, STROKE_COLORS[state.action]);
  }

  function extendStroke(event) {
    const stroke = state.current;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    const ctx = stroke.canvas.getContext("2d");
    for (const e of (events.length ? events : [event])) {
      const p = point(e);
      const q = stroke.points[stroke.points.length - 1];
      if (Math.abs(p[0] - q[0]) + Math.abs(p[1] - q[1]) < 0.5) continue;
      stroke.points.push(p);
      pathOn(ctx, [q, p], stroke.width, STROKE_COLORS[stroke.action]);
    }
  }

  function finishStroke() {
    const stroke = state.current;
    state.current = null;
    stroke.mask = stroke.canvas.toDataURL("image/png");
    state.strokes.push(stroke);
    state.undone = [];
    updateStack();
    render();
  }

  function drawView() {
    view.clearRect(0, 0, MASK_SIZE, MASK_SIZE);
    if (ui.showStrokes.checked) {
      for (const stroke of state.strokes) {
        // a light fill plus an outline ring: where it was painted, without hiding the result
        view.globalAlpha = 0.12;
        view.drawImage(stroke.canvas, 0, 0);
        const ctx = scratch.getContext("2d");
        ctx.clearRect(0, 0, MASK_SIZE, MASK_SIZE);
        ctx.globalCompositeOperation = "source-over";
        pathOn(ctx, stroke.points, stroke.width + 5, STROKE_COLORS[stroke.action]);
        ctx.globalCompositeOperation = "destination-out";
        pathOn(ctx, stroke.points, stroke.width, "black");
        ctx.globalCompositeOperation = "source-over";
        view.globalAlpha = 0.9;
        view.drawImage(scratch, 0, 0);
      }
    }
    if (state.current) {
      view.globalAlpha = 0.45;
      view.drawImage(state.current.canvas, 0, 0);
    }
    view.globalAlpha = 1;
    if (state.hover && !state.current) {
      view.beginPath();
      view.arc(state.hover[0], state.hover[1], state.brush / 2, 0, 2 * Math.PI);
      view.lineWidth = 2;
      view.strokeStyle = "rgba(255, 255, 255, 0.9)";
      view.stroke();
      view.lineWidth = 1;
      view.strokeStyle = "rgba(0, 0, 0, 0.7)";
      view.stroke();
    }
  }

  ui.canvas.addEventListener("pointerdown", (event) => {
    if (!event.isPrimary || event.button > 0 || state.current) return;
    if (!state.concept) {
      showError("pick a concept first");
      return;
    }
    event.preventDefault();
    try {
      ui.canvas.setPointerCapture(event.pointerId);
    } catch (err) {
      // capture is a convenience: strokes still end on pointerup over the canvas
    }
    startStroke(event);
    drawView();
  });

  ui.canvas.addEventListener("pointermove", (event) => {
    if (state.current && event.pointerId === state.current.pointer) {
      extendStroke(event);
    } else if (event.pointerType === "mouse") {
      state.hover = point(event);
    }
    drawView();
  });

  ui.canvas.addEventListener("pointerup", (event) => {
    if (!state.current || event.pointerId !== state.current.pointer) return;
    extendStroke(event);
    state.hover = event.pointerType === "mouse" ? point(event) : null;
    finishStroke();
  });

  ui.canvas.addEventListener("pointercancel", (event) => {
    if (!state.current || event.pointerId !== state.current.pointer) return;
    state.current = null; // the browser took the pointer over (scrolling, a system gesture): drop the stroke
    drawView();
  });

  ui.canvas.addEventListener("pointerleave", () => {
    state.hover = null;
    drawView();
  });

  // ----- controls -----------------------------------------------------------------------------------------------

  function pressed(button, on) {
    button.classList.toggle("on", on);
    button.setAttribute("aria-pressed", on ? "true" : "false");
  }

  function currentLayer() {
    return state.fine && state.fineLayer ? state.fineLayer : state.defaultLayer;
  }

  function selectConcept(name) {
    state.concept = name;
    for (const button of ui.concepts.querySelectorAll("button[data-concept]")) {
      pressed(button, button.dataset.concept === name);
    }
    updateStrengthTitles();
  }

  function updateStrengthTitles() {
    const entry = state.concept && (state.byLayer[currentLayer()] || {})[state.concept];
    for (const [name, button] of Object.entries(ui.strength)) {
      button.title = entry ? `${entry.strengths[name]} of ${entry.units} ${entry.name} units at ${entry.layer}` : "";
    }
  }

  function setAction(action) {
    state.action = action;
    pressed(ui.remove, action === "remove");
    pressed(ui.draw, action === "draw");
  }

  function setStrength(strength) {
    state.strength = strength;
    for (const [name, button] of Object.entries(ui.strength)) pressed(button, name === strength);
  }

  function applyLayer() {
    const available = state.byLayer[currentLayer()] || {};
    let first = null;
    for (const button of ui.concepts.querySelectorAll("button[data-concept]")) {
      const ok = button.dataset.concept in available;
      button.disabled = !ok;
      if (ok && first === null) first = button.dataset.concept;
    }
    if (!(state.concept in available)) selectConcept(first);
    updateStrengthTitles();
  }

  function buildPalette(list) {
    state.byLayer = {};
    const resolution = {};
    for (const entry of list) {
      (state.byLayer[entry.layer] = state.byLayer[entry.layer] || {})[entry.name] = entry;
      resolution[entry.layer] = entry.resolution;
      if (entry.default) state.defaultLayer = entry.layer;
    }
    if (!state.defaultLayer && list.length) state.defaultLayer = list[0].layer;
    const cells = (layer) => resolution[layer][0] * resolution[layer][1];
    const others = Object.keys(resolution).filter((layer) => layer !== state.defaultLayer);
    others.sort((a, b) => cells(b) - cells(a));
    state.fineLayer = others.length && cells(others[0]) > cells(state.defaultLayer) ? others[0] : null;
    if (state.fineLayer) {
      const r = resolution[state.fineLayer];
      ui.fineLabel.textContent = `fine strokes (${r[0]}x${r[1]})`;
      ui.fine.disabled = false;
    } else {
      ui.fineLabel.textContent = "fine strokes (none prepared)";
      ui.fine.disabled = true;
      ui.fine.checked = false;
    }

    // one button per class name, grouped by category
    const groups = new Map();
    const seen = new Set();
    for (const entry of list) {
      if (seen.has(entry.name)) continue;
      seen.add(entry.name);
      if (!groups.has(entry.category)) groups.set(entry.category, []);
      groups.get(entry.category).push(entry);
    }
    const order = [...groups.keys()].sort((a, b) => {
      const ia = CATEGORY_ORDER.indexOf(a), ib = CATEGORY_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    ui.concepts.textContent = "";
    for (const category of order) {
      const group = document.createElement("div");
      group.className = "category";
      group.dataset.category = category;
      const title = document.createElement("h3");
      title.textContent = category;
      group.appendChild(title);
      const row = document.createElement("div");
      row.className = "buttons";
      for (const entry of groups.get(category)) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "concept";
        button.dataset.concept = entry.name;
        button.setAttribute("aria-pressed", "false");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        const color = entry.color;  // [r, g, b]: the class's colour in the segmentation overlay
        if (color) swatch.style.background = `rgb(${color[0]}, ${color[1]}, ${color[2]})`;
        button.appendChild(swatch);
        button.appendChild(document.createTextNode(entry.name));
        button.title = `${entry.name} (${entry.category}): ranked by ${entry.ranking}`;
        button.addEventListener("click", () => selectConcept(entry.name));
        row.appendChild(button);
      }
      group.appendChild(row);
      ui.concepts.appendChild(group);
    }
    const names = [...seen];
    selectConcept(names.includes("tree") ? "tree" : names[0] || null);
    applyLayer();
  }

  ui.remove.addEventListener("click", () => setAction("remove"));
  ui.draw.addEventListener("click", () => setAction("draw"));
  for (const [name, button] of Object.entries(ui.strength)) button.addEventListener("click", () => setStrength(name));
  ui.fine.addEventListener("change", () => {
    state.fine = ui.fine.checked;
    applyLayer();
  });
  ui.brush.addEventListener("input", () => {
    state.brush = Number(ui.brush.value);
    ui.brushSize.textContent = ui.brush.value;
    drawView();
  });
  ui.undo.addEventListener("click", undo);
  ui.redo.addEventListener("click", redo);
  ui.reset.addEventListener("click", reset);
  ui.newScene.addEventListener("click", () => setSeed(Math.floor(Math.random() * 1000000)));
  ui.seedForm.addEventListener("submit", (event) => {
    event.preventDefault();
    setSeed(ui.seed.value);
  });
  ui.seed.addEventListener("change", () => setSeed(ui.seed.value));
  ui.overlay.addEventListener("change", () => {
    ui.segmentation.hidden = !ui.overlay.checked;
  });
  ui.showStrokes.addEventListener("change", drawView);
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "checkbox" && event.target.type !== "range") {
      return;
    }
    if (!(event.ctrlKey || event.metaKey)) return;
    const key = event.key.toLowerCase();
    if (key === "z" && !event.shiftKey) {
      event.preventDefault();
      undo();
    } else if ((key === "z" && event.shiftKey) || key === "y") {
      event.preventDefault();
      redo();
    }
  });

  // ----- start --------------------------------------------------------------------------------------------------

  async function start() {
    document.body.dataset.busy = "1";
    ui.segmentation.hidden = !ui.overlay.checked;
    ui.fine.checked = false;
    updateStack();
    try {
      buildPalette(await api("/api/concepts"));
    } catch (err) {
      ui.concepts.textContent = "";
      showError(`cannot load the concepts: ${err.message}`);
      document.body.dataset.busy = "0";
      return;
    }
    const asked = new URL(window.location.href).searchParams.get("seed");
    const seed = asked !== null && /^\d+$/.test(asked) && Number(asked) <= MAX_SEED
      ? Number(asked) : Math.floor(Math.random() * 1000000);
    setSeed(seed);
  }

  start();
})();
