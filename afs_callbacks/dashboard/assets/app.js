/* The dashboard page: one script for the three views (runs, a run, the outbox). It polls
 * the JSON API every second while the tab is visible, so what it shows is at most ~1 s
 * behind the store. Every text from the history is inserted as text, never as HTML. */
"use strict";

(function () {
  const POLL_MS = 1000;
  /* Each status's words, icon and colour come from the API (the run's outcome decides them,
   * here as on the cards and in the end messages); these cover the first paint. */
  let statusInfo = {};
  const csrf = (document.querySelector('meta[name="afs-csrf"]') || {}).content || "";
  const main = document.getElementById("main");
  const live = document.getElementById("live");

  /* h("div", {class: "x"}, "text", child, ...) — attributes set as properties/attributes, children as nodes. */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const key in attrs || {}) {
      const value = attrs[key];
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function when(epoch) {
    if (!epoch) return "";
    const d = new Date(epoch * 1000), today = new Date();
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return d.toDateString() === today.toDateString() ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }
  function span(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 0.1) return `${seconds.toFixed(2)} s`;  // 0.03 s, not 0 s
    if (seconds < 10) return `${(Math.floor(seconds * 10) / 10).toFixed(1)} s`;  // 0.3 s, 4.2 s
    seconds = Math.round(seconds);
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${pad(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${pad(Math.floor((seconds % 3600) / 60))} min`;
  }
  const nextAt = (epoch, now) => (epoch <= now + 1 ? "now" : `at ${when(epoch)}`);
  function bytes(value) {  // the monitors record bytes
    if (value === null || value === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = value, i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
  }
  const num = (v) => (v === null || v === undefined ? "" : window.AfsChart.format(v));
  const money = (v) => (v === null || v === undefined ? "" : `$${v.toFixed(2)}`);
  function learnStatuses(info) {
    if (info) statusInfo = Object.fromEntries(info.map((s) => [s.status, s]));
  }
  /* Dark text on a light colour, white on a dark one (WCAG relative luminance). */
  function textOn(hex) {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
      .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.35 ? "#1f2328" : "#fff";
  }
  function badge(status, note) {
    const info = statusInfo[status] || { label: status, icon: "", colour: "" };
    const look = info.colour ? `background:${info.colour};color:${textOn(info.colour)}` : null;
    return h("span", { class: `badge s-${status}`, style: look, title: note || info.label, "data-status": status },
      info.icon ? `${info.icon} ${info.label}` : info.label);
  }
  /* A run that saw a NaN/Inf carries the mark whatever its outcome, with the first one as its tip. */
  const nanMark = (text) => (text ? h("span", { class: "nan-mark", title: text, "data-nan": "1" }, "NaN") : null);

  function progressBar(fraction) {
    if (fraction === null || fraction === undefined) return "";
    const pct = Math.round(fraction * 100);
    return h("span", { class: "progress-wrap" }, h("span", { class: "progress", title: `${pct}%` }, h("span", { style: `width:${pct}%` })), ` ${pct}%`);
  }

  async function getJSON(url) {
    const answer = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const data = await answer.json().catch(() => ({ error: `HTTP ${answer.status}` }));
    if (!answer.ok) throw Object.assign(new Error(data.error || `HTTP ${answer.status}`), { data, status: answer.status });
    return data;
  }

  function setLive(ok, text) {
    live.textContent = text;
    live.className = ok ? "live" : "live off";
  }

  function showProblem(error) {
    const store = error.data && error.data.store;
    main.replaceChildren(h("section", { class: "problem" },
      h("h1", {}, error.status === 503 ? "The history cannot be read" : "Something went wrong"),
      h("p", {}, error.message),
      store ? h("p", {}, "File: ", h("code", { id: "store-path" }, store)) : null,
      h("p", { class: "muted" }, "Checking again every second.")));
  }

  /* Run `tick` now and every second while visible; a failure shows the problem and keeps trying. */
  function poll(tick) {
    let broken = false;
    async function once() {
      if (document.hidden) return;
      try {
        await tick();
        setLive(true, `live · ${when(Date.now() / 1000)}`);
        broken = false;
      } catch (error) {
        setLive(false, "not updating");
        if (!broken || error.status === 503) showProblem(error);
        broken = true;
        throw error;
      }
    }
    const loop = () => once().catch(() => {}).finally(() => setTimeout(loop, POLL_MS));
    loop();
  }

  /* Runs ------------------------------------------------------------------------- */

  function runsView() {
    const params = new URLSearchParams(location.search);
    const status = h("select", { id: "f-status" }, h("option", { value: "" }, "any status"));
    const wantedStatus = params.get("status") || "";
    const model = h("select", { id: "f-model" }, h("option", { value: "" }, "any model"));
    const search = h("input", { id: "f-search", type: "search", placeholder: "search run id", value: params.get("q") || "" });
    if (wantedStatus) status.appendChild(h("option", { value: wantedStatus }, wantedStatus));
    status.value = wantedStatus;
    const body = h("tbody", { id: "runs-body" });
    const count = h("span", { class: "muted", id: "runs-count" });
    main.replaceChildren(
      h("section", { class: "toolbar" }, h("h1", {}, "Runs"), status, model, search, count),
      h("table", { class: "runs" },
        h("thead", {}, h("tr", {}, ["Model", "Run", "Host", "Status", "Started", "Duration", "Progress", "Latest", "Best", "Cost"].map((t) => h("th", {}, t)))),
        body));
    let wantedModel = params.get("model") || "";
    const query = () => {
      const q = new URLSearchParams();
      if (status.value) q.set("status", status.value);
      if (model.value || wantedModel) q.set("model", model.value || wantedModel);
      if (search.value.trim()) q.set("q", search.value.trim());
      return q.toString();
    };
    const refresh = async () => {
      const q = query();
      history.replaceState(null, "", q ? `/?${q}` : "/");
      const data = await getJSON(`/api/runs${q ? "?" + q : ""}`);
      learnStatuses(data.status_info);
      fillStatuses(status, data.status_info, data.statuses);
      fillModels(model, data.models, wantedModel);
      wantedModel = "";
      count.textContent = `${data.runs.length} shown of ${data.total}`;
      body.replaceChildren(...(data.runs.length ? data.runs.map((r) => runRow(r, data.now))
        : [h("tr", {}, h("td", { colspan: 10, class: "muted empty" }, data.total ? "No run matches these filters." : "No runs recorded yet: train with AFSNotify and they appear here."))]));
    };
    for (const control of [status, model]) control.addEventListener("change", () => refresh().catch(showProblem));
    search.addEventListener("input", () => refresh().catch(showProblem));
    poll(refresh);
  }

  /* One option per status a run can have (each outcome), with how many runs have it. */
  function fillStatuses(select, info, counts) {
    const current = select.value;
    const options = (info || []).map((s) => [s.status, `${s.icon ? s.icon + " " : ""}${s.label}${counts[s.status] ? ` (${counts[s.status]})` : ""}`]);
    const have = Array.from(select.options).slice(1).map((o) => `${o.value}=${o.textContent}`).join("\n");
    if (have !== options.map(([v, t]) => `${v}=${t}`).join("\n")) {
      select.replaceChildren(h("option", { value: "" }, "any status"), ...options.map(([v, t]) => h("option", { value: v }, t)));
    }
    select.value = current;
  }

  function fillModels(select, models, wanted) {
    const current = wanted || select.value;
    const have = Array.from(select.options).slice(1).map((o) => o.value).join("\n");
    if (have !== models.join("\n")) {
      select.replaceChildren(h("option", { value: "" }, "any model"), ...models.map((m) => h("option", { value: m }, m)));
    }
    select.value = models.includes(current) ? current : "";
  }

  /* A running run's duration from the browser's clock: an unchanged store answers "not
   * modified", so the server's figure would stand still. */
  const durationOf = (r) => span(r.status === "running" && r.started_at ? Math.max(0, Date.now() / 1000 - r.started_at) : r.duration);

  function runRow(r, now) {
    const link = `/run/${encodeURIComponent(r.run_id)}`;
    const latest = r.latest_name ? `${r.latest_name} ${r.latest_text !== null && r.latest_text !== undefined ? r.latest_text : num(r.latest)}` : "";
    const best = r.best !== null ? `${r.monitor || "best"} ${num(r.best)}${r.best_epoch ? ` (ep ${r.best_epoch})` : ""}` : "";
    return h("tr", { "data-run": r.run_id },
      h("td", {}, r.model), h("td", {}, h("a", { href: link, class: "run-link" }, r.run_id)), h("td", {}, r.host),
      h("td", {}, badge(r.status, r.status_note), nanMark(r.non_finite)), h("td", {}, when(r.started_at)), h("td", {}, durationOf(r)),
      h("td", {}, progressBar(r.progress)), h("td", { class: "num" }, latest), h("td", { class: "num" }, best),
      h("td", { class: "num" }, money(r.cost)));
  }

  /* One run -------------------------------------------------------------------------- */

  function runView(runId) {
    const head = h("section", { class: "run-head" });
    const charts = h("section", { class: "charts", id: "charts" });
    const events = h("section", { class: "events" });
    const control = h("section", { class: "control", id: "control" });
    main.replaceChildren(h("p", { class: "crumbs" }, h("a", { href: "/" }, "← Runs")), head, control, charts, events);
    const commands = controlBox(runId, control);
    const drawn = {};
    // Charts are drawn at their box's width: a resized window redraws them at the next poll.
    window.addEventListener("resize", () => { for (const key in drawn) delete drawn[key]; });
    poll(async () => {
      const data = await getJSON(`/api/run/${encodeURIComponent(runId)}`);
      learnStatuses(data.status_info);
      document.title = `${runId} · afs-callbacks`;
      head.replaceChildren(...runHead(data).filter(Boolean));
      commands(data.control || { dashboard: false, commands: [] }, data.now);
      drawCharts(charts, data.series, drawn);
      events.replaceChildren(h("h2", {}, "Events"), eventsTable(data.events, data.now));
    });
  }

  function runHead(data) {
    const s = data.state;
    if (!s) return [h("h1", {}, data.run_id), h("p", { class: "muted" }, "No run state recorded for this run (only its events).")];
    const facts = [
      ["Model", s.model], ["Host", s.host], ["Started", when(s.started_at)], ["Duration", durationOf(s)],
      ["Epoch", s.epoch !== null ? `${s.epoch}${s.total_epochs ? " / " + s.total_epochs : ""}` : ""],
      ["Step", s.step !== null ? `${s.step}${s.total_steps ? " / " + s.total_steps : ""}` : ""],
      ["Progress", progressBar(s.progress)], ["ETA", s.status === "running" ? span(s.eta_seconds) : ""],
      ["Steps/s", num(s.steps_per_second)], ["Samples/s", num(s.samples_per_second)],
      ["Best", s.best !== null ? `${s.monitor || ""} ${num(s.best)}${s.best_epoch ? ` (epoch ${s.best_epoch})` : ""}` : ""],
      ["Peak GPU memory", bytes(s.peak_gpu_memory)],
      ["GPU utilisation", s.gpu_utilization !== null ? `${num(s.gpu_utilization)} %` : ""],
      ["Cost", money(s.cost)], ["End", s.end_reason], ["Best checkpoint", s.best_checkpoint],
    ].filter(([, v]) => v !== "" && v !== null && v !== undefined);
    const texts = s.metric_texts || {};
    const metrics = Object.entries(s.metrics || {}).map(([k, v]) => h("span", { class: "metric" }, h("b", {}, k), " ", k in texts ? texts[k] : num(v)));
    return [
      h("h1", {}, s.run_id, " ", badge(s.status, s.status_note), nanMark(s.non_finite)),
      s.non_finite ? h("p", { class: "nan-note", id: "run-nan" }, `First NaN/Inf: ${s.non_finite}`) : null,
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      metrics.length ? h("p", { class: "metrics" }, metrics) : null,
      s.error ? h("div", { class: "error-box", id: "run-error" }, h("b", {}, s.error_type || "Error"), h("pre", {}, s.error)) : null,
      s.summary ? h("div", { class: "summary", id: "run-summary" }, h("h2", {}, "Summary"), h("pre", {}, s.summary)) : null,
    ];
  }

  /* Run control: Stop (asks for a confirmation) and Checkpoint, and the run's commands.
     Redrawn only when something changed, so a button is not replaced under the pointer. */
  function controlBox(runId, box) {
    const note = h("p", { class: "note", id: "control-note", role: "status" });
    let shown = "", asking = null, last = null;
    const send = async (path, body) => {
      const answer = await fetch(path, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-AFS-CSRF": csrf }, body: JSON.stringify(body),
      });
      const result = await answer.json();
      if (!answer.ok) throw new Error(result.error || `HTTP ${answer.status}`);
      return result.command;
    };
    const act = async (action) => {
      try {
        const command = await send("/api/command", { run_id: runId, action });
        if (command.state === "refused") note.textContent = `Refused: ${command.detail}`;
        else if (command.state === "unconfirmed") { asking = command.id; note.textContent = ""; }
        else note.textContent = `${action} asked: the run acts at its next step.`;
      } catch (error) { note.textContent = `${action} failed: ${error.message}`; }
      shown = ""; draw();
    };
    const answer = async (yes) => {
      const id = asking; asking = null;
      try {
        const command = await send(yes ? "/api/command/confirm" : "/api/command/cancel", { id });
        note.textContent = yes ? (command.state === "pending" ? "Stop asked: the run stops after its current step." : `Stop ${command.state}: ${command.detail}`) : "Cancelled: the run goes on.";
      } catch (error) { note.textContent = `Stop failed: ${error.message}`; }
      shown = ""; draw();
    };
    const draw = () => {
      if (!last) return;
      const [control, now] = last;
      const sig = JSON.stringify([control, asking]);
      if (sig === shown) return;
      shown = sig;
      const parts = [];
      if (control.dashboard) {
        parts.push(h("h2", {}, "Control"), asking
          ? h("p", { class: "confirm", id: "stop-confirm" }, "Stop this run? It finishes its current step, saves a checkpoint where it has a checkpointer, and ends. ",
              h("button", { class: "danger", id: "stop-yes", onclick: () => answer(true) }, "Yes, stop it"), " ",
              h("button", { id: "stop-no", onclick: () => answer(false) }, "Cancel"))
          : h("p", { class: "buttons" },
              h("button", { class: "danger", id: "stop-run", onclick: () => act("stop") }, "Stop"), " ",
              h("button", { id: "checkpoint-run", onclick: () => act("checkpoint") }, "Checkpoint")));
      }
      parts.push(note);
      if (control.commands.length) {
        parts.push(h("h2", {}, "Commands"), h("table", { class: "commands", id: "commands" },
          h("thead", {}, h("tr", {}, ["When", "Command", "Who", "Via", "State", "Detail"].map((t) => h("th", {}, t)))),
          h("tbody", {}, control.commands.map((c) => h("tr", { "data-command": c.id, "data-state": c.state },
            h("td", {}, when(c.created)), h("td", {}, c.action), h("td", {}, c.actor), h("td", {}, c.source),
            h("td", {}, c.state), h("td", {}, c.detail))))));
      }
      box.replaceChildren(...parts);
    };
    return (control, now) => { last = [control, now]; draw(); };
  }

  function groupOf(series) {
    if (/^gpu|gpu_/i.test(series)) return "GPU";
    return /loss/i.test(series) ? "Loss" : "Metrics";
  }

  function drawCharts(box, series, drawn) {
    const groups = {};
    for (const s of series) {
      const key = `${groupOf(s.series)} · per ${s.axis}`;
      (groups[key] = groups[key] || { axis: s.axis, series: [] }).series.push({ name: s.series, x: s.x, y: s.y });
    }
    const rank = (key) => ["Loss", "Metrics", "GPU"].indexOf(key.split(" ")[0]) * 2 + (groups[key].axis === "step" ? 0 : 1);
    const order = Object.keys(groups).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    if (!order.length) {
      box.replaceChildren(h("p", { class: "muted" }, "No curves recorded yet."));
      for (const k in drawn) delete drawn[k];
      return;
    }
    if (box.querySelector("p.muted")) box.replaceChildren();
    const cardOf = (key) => box.querySelector(`[data-chart="${CSS.escape(key)}"]`);
    // Every card first, then the drawing: a new card changes the others' widths.
    const added = order.filter((key) => !cardOf(key));
    for (const key of added) box.appendChild(h("div", { class: "chart", "data-chart": key }, h("h3", {}, key), h("div", { class: "plot" })));
    if (added.length) for (const key in drawn) delete drawn[key];
    for (const key of order) {
      const sig = JSON.stringify(groups[key].series.map((s) => [s.name, s.x.length, s.x[s.x.length - 1], s.y[s.y.length - 1]]));
      const card = cardOf(key);
      if (drawn[key] !== sig) {
        window.AfsChart.render(card.querySelector(".plot"), { series: groups[key].series, xLabel: groups[key].axis });
        drawn[key] = sig;
      }
    }
  }

  function eventsTable(events, now) {
    if (!events.length) return h("p", { class: "muted" }, "No events recorded for this run.");
    return h("table", { class: "timeline" },
      h("thead", {}, h("tr", {}, ["Time", "Level", "Type", "Title", "Deliveries"].map((t) => h("th", {}, t)))),
      h("tbody", {}, events.map((e) => h("tr", { "data-event": e.id },
        h("td", {}, when(e.created)), h("td", {}, h("span", { class: `level l-${e.level}` }, e.level)),
        h("td", {}, e.event_type), h("td", { title: e.message }, e.traceback ? failure(e) : e.title),
        h("td", {}, e.deliveries.length ? e.deliveries.map((d) => deliveryChip(d, now)) : h("span", { class: "muted" }, "no channel"))))));
  }

  /* A failure's title opens its message (the error first) and Python's full traceback;
   * it stays open across the page's redraws. */
  const openFailures = new Set();
  function failure(e) {
    const toggled = (ev) => { if (ev.target.open) openFailures.add(e.id); else openFailures.delete(e.id); };
    return h("details", { class: "failure", open: openFailures.has(e.id), ontoggle: toggled }, h("summary", {}, e.title),
      h("pre", { class: "failure-message" }, e.message),
      h("p", { class: "muted" }, "Full traceback"), h("pre", { class: "traceback" }, e.traceback));
  }

  function deliveryChip(d, now) {
    let text = `${d.channel}: ${d.label}`;
    if (d.label === "retrying" && d.next_attempt) text += ` (next ${nextAt(d.next_attempt, now)})`;
    if (d.label === "delivered" && d.delivered_at) text += ` ${when(d.delivered_at)}`;
    const tip = [d.detail, d.attempts ? `${d.attempts} attempt(s)` : ""].filter(Boolean).join(" · ");
    return h("span", { class: `chip d-${d.label}`, title: tip, "data-channel": d.channel }, text, d.label === "dead" && d.detail ? h("small", {}, d.detail) : null);
  }

  /* Outbox --------------------------------------------------------------------------- */

  function outboxView() {
    const note = h("p", { class: "note", id: "retry-note", role: "status" });
    const body = h("div");
    main.replaceChildren(h("section", { class: "toolbar" }, h("h1", {}, "Outbox")), note, body);
    let shown = "";
    const refresh = async () => {
      const data = await getJSON("/api/outbox");
      const sig = JSON.stringify({ ...data, now: 0 });
      if (sig === shown) return;  // redraw only on change, so a button is not replaced under the pointer
      shown = sig;
      body.replaceChildren(...outbox(data, note, refresh));
    };
    poll(refresh);
  }

  function outbox(data, note, refresh) {
    const channels = Object.keys(data.counts).sort();
    const states = Array.from(new Set(["delivered", "pending", "sending", "dead", ...channels.flatMap((c) => Object.keys(data.counts[c]))]));
    const retry = async (body, label) => {
      try {
        const answer = await fetch("/api/retry", {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-AFS-CSRF": csrf }, body: JSON.stringify(body),
        });
        const result = await answer.json();
        if (!answer.ok) throw new Error(result.error || `HTTP ${answer.status}`);
        note.textContent = `${label}: ${result.requeued} message(s) queued again; they go out with the next sender that runs (afs-notify flush sends them now).`;
      } catch (error) {
        note.textContent = `Retry failed: ${error.message}`;
      }
      await refresh();
    };
    const dead = data.messages.filter((m) => m.state === "dead");
    const waiting = data.messages.filter((m) => m.state !== "dead");
    const sections = [
      h("h2", {}, "Per channel"),
      channels.length ? h("table", { class: "counts" },
        h("thead", {}, h("tr", {}, h("th", {}, "Channel"), states.map((s) => h("th", {}, s)), h("th", {}, ""))),
        h("tbody", {}, channels.map((c) => h("tr", { "data-channel": c }, h("td", {}, c),
          states.map((s) => h("td", { class: "num" }, data.counts[c][s] || "")),
          h("td", {}, data.counts[c].dead ? h("button", { class: "retry", onclick: () => retry({ channel: c }, `Retry ${c}`) }, `Retry ${data.counts[c].dead} dead`) : ""))))) : h("p", { class: "muted" }, "Nothing was ever queued."),
    ];
    if (data.channels.length) {
      sections.push(h("h2", {}, "Channels configured for this dashboard's environment"),
        h("table", { class: "channels" }, h("tbody", {}, data.channels.map((c) => h("tr", {}, h("td", {}, c.channel), h("td", {}, c.state), h("td", {}, c.detail))))));
    }
    sections.push(h("h2", {}, `Dead (${dead.length})`), messagesTable(dead, data.now, retry),
      h("h2", {}, `Pending (${waiting.length})`), messagesTable(waiting, data.now, null));
    return sections;
  }

  function messagesTable(messages, now, retry) {
    if (!messages.length) return h("p", { class: "muted" }, "None.");
    return h("table", { class: "messages" },
      h("thead", {}, h("tr", {}, ["Time", "Channel", "Title", "Run", "State", "Detail", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, messages.map((m) => h("tr", { "data-event": m.event_id, "data-channel": m.channel },
        h("td", {}, when(m.created)), h("td", {}, m.channel), h("td", {}, m.title),
        h("td", {}, m.run_id ? h("a", { href: `/run/${encodeURIComponent(m.run_id)}` }, m.run_id) : ""),
        h("td", {}, h("span", { class: `chip d-${m.label}` }, m.label)),
        h("td", {}, m.label === "retrying" && m.next_attempt ? `${m.detail} (next ${nextAt(m.next_attempt, now)})` : m.detail),
        h("td", {}, retry ? h("button", { class: "retry", onclick: () => retry({ event_id: m.event_id, channel: m.channel }, "Retry") }, "Retry") : "")))));
  }

  /* Route ---------------------------------------------------------------------------- */

  const path = location.pathname;
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("here", (a.dataset.nav === "outbox") === (path === "/outbox")));
  if (path.startsWith("/run/")) runView(decodeURIComponent(path.slice(5)));
  else if (path === "/outbox") outboxView();
  else runsView();
})();
