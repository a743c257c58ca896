// cellserve editor: ghost-text suggestions and a gate viewer over one WebSocket.
// The message protocol is documented in cellserve_client/web/__init__.py.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const text = $("text"), mirror = $("mirror"), before = $("before"), ghost = $("suggestion");
  const statusEl = $("status"), gatesEl = $("gates"), detail = $("detail"), legendEl = $("legend");
  const caption = $("gates-caption"), modelSel = $("model"), rankedEl = $("ranked");

  // One sentence per gate, in PyTorch's convention (see server/cellserve/nn/cells.py).
  const LEGEND = {
    f: "forget gate: near 0 the cell forgets its previous content, near 1 it keeps it (c = f·c₋₁ + i·g).",
    i: "input gate: near 1 the new candidate g is written into the cell.",
    o: "output gate: near 1 the cell's content is shown in the hidden state (h = o·tanh c).",
    r: "reset gate: near 0 the previous state is ignored when forming the new candidate n.",
    z: "update gate: near 1 the state keeps its previous value, near 0 it takes the new candidate (h = (1−z)·n + z·h₋₁; Cho et al. write z the other way round).",
  };
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  let ws = null, retry = 0, seq = 0, latestSeq = -1, rankedSeq = -1;
  let model = null, suggestion = "", suggestedFor = null, fresh = false;
  const sentAt = new Map();
  let latency = null, position = 0, failovers = 0, serverState = "connecting";
  let gates = null, ranked = [], rankedIndex = 0, errorText = "";

  // --- the socket ----------------------------------------------------------------------------

  function connect() {
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.onopen = () => {
      retry = 0;
      serverState = "opening";
      latestSeq = send({ type: "open", model: model ? model.name : null, text: text.value });
      status();
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      onMessage(msg);
    };
    ws.onclose = () => {
      serverState = "web backend unreachable, reconnecting";
      status();
      setTimeout(connect, Math.min(5000, 250 * 2 ** retry++));
    };
  }

  function send(msg) {
    msg.seq = ++seq;
    sentAt.set(msg.seq, performance.now());
    if (sentAt.size > 200) sentAt.delete(sentAt.keys().next().value);
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
    return msg.seq;
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "opened":
        model = msg.model;
        fillModels(msg.models, model.name);
        text.maxLength = msg.limits.max_text_chars;
        legend(model.gates);
        serverState = "ok";
        errorText = "";
        break;
      case "suggestion":
        if (msg.seq !== latestSeq) return; // stale: a newer edit is on its way
        suggestion = msg.text;
        suggestedFor = text.value;
        fresh = true;
        position = msg.position;
        failovers = msg.failovers;
        if (sentAt.has(msg.seq)) latency = performance.now() - sentAt.get(msg.seq);
        serverState = "ok";
        errorText = ""; // the newest edit was answered: earlier errors are over
        render();
        break;
      case "gates":
        if (msg.seq !== latestSeq) return;
        gates = msg;
        drawGates();
        break;
      case "ranked":
        if (msg.seq !== rankedSeq) return;
        showRanked(msg.items);
        break;
      case "status": // the backend lost cellserve (or never reached it) and retries with backoff
        serverState = msg.state === "ok" ? "ok" : "reconnecting · " + msg.message;
        if (msg.state === "ok") errorText = "";
        break;
      case "error":
        errorText = msg.code + ": " + msg.message;
        break;
    }
    status();
  }

  // --- the editor ----------------------------------------------------------------------------

  function caretAtEnd() {
    const n = text.value.length;
    return text.selectionStart === n && text.selectionEnd === n;
  }

  function render() {
    const show = caretAtEnd() && suggestedFor === text.value ? suggestion : "";
    before.textContent = text.value;
    ghost.textContent = show;
    ghost.dataset.state = fresh ? "fresh" : "pending";
    mirror.scrollTop = text.scrollTop;
  }

  function edited() {
    const v = text.value;
    const full = suggestedFor === null ? null : suggestedFor + suggestion;
    if (full !== null && v.length >= suggestedFor.length && v.startsWith(suggestedFor) && full.startsWith(v)) {
      suggestion = full.slice(v.length); // typed into the suggestion: show the rest meanwhile
      suggestedFor = v;
    } else {
      suggestion = "";
      suggestedFor = null;
    }
    fresh = false;
    hideRanked();
    latestSeq = send({ type: "edit", text: v });
    render();
  }

  function insert(s) {
    text.setRangeText(s, text.selectionStart, text.selectionEnd, "end");
    text.dispatchEvent(new Event("input"));
  }

  text.addEventListener("input", edited);
  text.addEventListener("scroll", () => { mirror.scrollTop = text.scrollTop; });
  document.addEventListener("selectionchange", render);
  text.addEventListener("blur", hideRanked);
  text.addEventListener("keydown", (e) => {
    if (!rankedEl.hidden && rankedKey(e)) return;
    if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey) {
      e.preventDefault();
      const shown = ghost.textContent;
      insert(shown && caretAtEnd() ? shown : "    ");
    } else if ((e.key === " " || e.code === "Space") && e.ctrlKey) {
      e.preventDefault(); // reserved: the ranked suggestions
      rankedSeq = send({ type: "ranked" });
    }
  });
  modelSel.addEventListener("change", () => {
    model = { name: modelSel.value };
    latestSeq = send({ type: "open", model: modelSel.value, text: text.value });
  });

  function fillModels(names, current) {
    modelSel.replaceChildren(...names.map((n) => new Option(n, n, false, n === current)));
  }

  function status() {
    const parts = [];
    if (model && model.cell) parts.push(`${model.name} (${model.cell} ${model.layers}×${model.hidden})`);
    parts.push(`position ${position}`);
    parts.push(latency === null ? "round trip –" : `round trip ${latency.toFixed(0)} ms`);
    if (failovers) parts.push(`failovers ${failovers}`);
    parts.push(serverState);
    if (errorText) parts.push(errorText);
    statusEl.textContent = parts.join(" · ");
    statusEl.className = "status" + (errorText ? " error" : serverState === "ok" ? "" : " warn");
  }

  // --- ranked suggestions (Ctrl+Space) --------------------------------------------------------

  function showRanked(items) {
    ranked = items;
    rankedIndex = 0;
    rankedEl.replaceChildren(...items.map((it, k) => {
      const li = document.createElement("li");
      const t = document.createElement("span");
      t.textContent = shown(it.text);
      const lp = document.createElement("span");
      lp.className = "lp";
      lp.textContent = it.logprob === null ? "" : `p ${Math.exp(it.logprob).toFixed(3)}`;
      li.append(t, lp);
      li.addEventListener("mousedown", (e) => { e.preventDefault(); pickRanked(k); });
      return li;
    }));
    rankedEl.hidden = items.length === 0;
    markRanked();
  }

  function markRanked() {
    [...rankedEl.children].forEach((li, k) => li.classList.toggle("active", k === rankedIndex));
  }

  function rankedKey(e) {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      rankedIndex = (rankedIndex + (e.key === "ArrowDown" ? 1 : ranked.length - 1)) % ranked.length;
      markRanked();
    } else if (e.key === "Enter" || e.key === "Tab") {
      pickRanked(rankedIndex);
    } else if (e.key === "Escape") {
      hideRanked();
    } else {
      return false;
    }
    e.preventDefault();
    return true;
  }

  function pickRanked(k) {
    const it = ranked[k];
    hideRanked();
    if (it) insert(it.text);
  }

  function hideRanked() {
    rankedEl.hidden = true;
    rankedSeq = -1;
  }

  // --- the gate viewer -----------------------------------------------------------------------

  function shown(c) {
    return c === " " ? "␣" : c === "\n" ? "↵" : c === "\t" ? "⇥" : c;
  }

  function color(v) {
    const x = Math.max(0, Math.min(1, v)) * (VIRIDIS.length - 1);
    const k = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - k;
    const c = VIRIDIS[k].map((a, j) => Math.round(a + (VIRIDIS[k + 1][j] - a) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function cell(i, cls) {
    const d = document.createElement("div");
    d.className = "cell" + (cls ? " " + cls : "");
    d.dataset.i = i;
    return d;
  }

  function drawGates() {
    const chars = gates.characters;
    gatesEl.replaceChildren();
    caption.textContent = chars.length
      ? `last ${chars.length} characters (from character ${gates.first_index}); colour = mean over the layer's units`
      : "";
    if (!chars.length) return;
    const layers = chars[0].layers.length;
    for (let l = 0; l < layers; l++) {
      const block = document.createElement("div");
      block.className = "layer";
      for (const g of gates.gate_names) {
        const row = document.createElement("div");
        row.className = "row";
        row.dataset.gate = `${l}${g}`;
        const label = document.createElement("span");
        label.className = "label";
        label.textContent = `L${l} ${g}`;
        row.append(label);
        chars.forEach((c, i) => {
          const d = cell(i);
          d.style.background = color(c.layers[l][g][0]);
          row.append(d);
        });
        block.append(row);
      }
      gatesEl.append(block);
    }
    drawTracked(chars.length);
    const axis = document.createElement("div");
    axis.className = "row chars";
    const pad = document.createElement("span");
    pad.className = "label";
    axis.append(pad);
    chars.forEach((c, i) => {
      const d = cell(i);
      d.textContent = shown(c.char);
      axis.append(d);
    });
    gatesEl.append(axis);
    const scale = document.createElement("div");
    scale.className = "scale";
    scale.innerHTML = '0 <span class="bar"></span> 1';
    gatesEl.append(scale);
    gatesEl.scrollLeft = gatesEl.scrollWidth; // the newest characters in view (labels stay: sticky)
  }

  // Units whose state tracks the text (found offline by `cellserve units`): one row each, the
  // state scaled to its largest magnitude in view, red above zero and blue below.
  const SHORT = { in_string: "string", in_comment: "comment", bracket_depth: "brackets", indent: "indent", column: "column" };

  function diverging(v) {
    const x = Math.max(-1, Math.min(1, v)), w = 1 - Math.abs(x);
    const end = x >= 0 ? [178, 24, 43] : [33, 102, 172];
    const c = end.map((a) => Math.round(a + (255 - a) * w));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function drawTracked(n) {
    const tracked = gates.tracked || [];
    if (!tracked.length) return;
    const block = document.createElement("div");
    block.className = "layer tracked";
    block.dataset.testid = "tracked";
    const title = document.createElement("div");
    title.className = "tracked-title";
    title.textContent = "units that track the text (state; red +, blue −)";
    block.append(title);
    for (const u of tracked) {
      const row = document.createElement("div");
      row.className = "row";
      row.dataset.unit = `${u.layer}:${u.unit}`;
      row.title = `layer ${u.layer} unit ${u.unit}: ${u.label} (r = ${u.correlation.toFixed(2)} on the training corpus)`;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = SHORT[u.feature] || u.feature;
      row.append(label);
      const scale = Math.max(1e-6, ...u.values.map(Math.abs));
      for (let i = 0; i < n; i++) {
        const d = cell(i);
        d.style.background = diverging(u.values[i] / scale);
        row.append(d);
      }
      block.append(row);
    }
    gatesEl.append(block);
  }

  function describe(i) {
    const c = gates.characters[i];
    const lines = [`'${shown(c.char)}'  character ${gates.first_index + i} of the text`];
    c.layers.forEach((layer, l) => {
      lines.push(`layer ${l}  ` + gates.gate_names.map((g) => `${g} ${layer[g][0].toFixed(2)}`).join("  "));
      for (const g of gates.gate_names) {
        const units = layer[g][1].map(([u, v, d]) =>
          `#${u} ${v.toFixed(2)}` + (d === null ? "" : ` (${d >= 0 ? "+" : "−"}${Math.abs(d).toFixed(2)})`));
        if (units.length) lines.push(`   ${g} units that moved most: ${units.join(", ")}`);
      }
    });
    for (const u of gates.tracked || []) {
      lines.push(`L${u.layer} #${u.unit} ${u.label} (r ${u.correlation.toFixed(2)}): state ${u.values[i].toFixed(2)}`);
    }
    lines.push("next: " + c.top.map(([ch, p]) => `'${shown(ch)}' ${p.toFixed(3)}`).join("  "));
    return lines.join("\n");
  }

  gatesEl.addEventListener("mouseover", (e) => {
    const d = e.target.closest(".cell");
    if (!d || !gates) return;
    gatesEl.querySelectorAll(".col-hover").forEach((x) => x.classList.remove("col-hover"));
    gatesEl.querySelectorAll(`.cell[data-i="${d.dataset.i}"]`).forEach((x) => x.classList.add("col-hover"));
    detail.textContent = describe(Number(d.dataset.i));
  });

  function legend(names) {
    legendEl.replaceChildren(...names.flatMap((g) => {
      const dt = document.createElement("dt");
      dt.textContent = g;
      const dd = document.createElement("dd");
      dd.textContent = LEGEND[g] || "";
      return [dt, dd];
    }));
  }

  status();
  render();
  connect();
})();
