// Tether operator console: sign-in, routing, the API helper and the session page (a plain
// script, no build step). actions.js, trail.js, lists.js, pages.js and figures.js load first
// and hang their parts on window.TetherUI; this script wires them together with ``context``.
//
// The page itself is public; every data call sends the API key from sessionStorage as
// x-api-key. Live updates read /events/stream with fetch (EventSource cannot send headers)
// and resume with Last-Event-ID, so a dropped connection never loses an event.
// Everything from the log is inserted as text (never as HTML): tool output is untrusted.
"use strict";

(() => {
  const KEY_STORAGE = "tether.apiKey";

  let apiKey = sessionStorage.getItem(KEY_STORAGE);
  let current = null; // the active view: { stop() }

  // DOM helpers ------------------------------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "dataset") Object.assign(el.dataset, value);
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function show(id) {
    for (const section of ["login", "list-view", "session-view", "resource-view"]) {
      document.getElementById(section).hidden = section !== id;
    }
    $("#sign-out").hidden = id === "login";
  }

  function setConnection(text, state) {
    const el = $("#connection");
    el.textContent = text;
    el.className = "connection" + (state ? " " + state : "");
  }

  // Formatting -------------------------------------------------------------------------------

  const int = new Intl.NumberFormat();

  function seconds(value) {
    if (value === null || value === undefined) return "—";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 120) return `${value.toFixed(1)} s`;
    if (value < 7200) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
    return `${(value / 3600).toFixed(1)} h`;
  }

  function dollars(cost) {
    if (!cost) return "—";
    const usd = cost.usd;
    return "≈ $" + (usd < 0.01 ? usd.toFixed(4) : usd.toFixed(2));
  }

  function clock(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function between(startIso, endIso) {
    return (new Date(endIso).getTime() - new Date(startIso).getTime()) / 1000;
  }

  const ATTENTION = {
    requires_action: "action required",
    error: "error",
    retries_exhausted: "retries exhausted",
    budget_reached: "budget reached",
  };
  const attentionLabel = (reason) => ATTENTION[reason] || reason;

  const statusBadge = (status) => h("span", { class: `badge status-${status}` }, status || "?");

  function textOf(content) {
    if (typeof content === "string") return content;
    if (!Array.isArray(content)) return "";
    return content
      .map((block) => {
        if (block.type === "text") return block.text;
        if (block.type === "image") return "[image]";
        if (block.type === "document") return `[document${block.title ? ": " + block.title : ""}]`;
        if (block.type === "search_result") return `[search result: ${block.title}]`;
        return `[${block.type}]`;
      })
      .join("\n");
  }

  // API --------------------------------------------------------------------------------------

  class Unauthorized extends Error {}

  class HttpError extends Error {
    constructor(status, message) {
      super(`HTTP ${status}: ${message}`);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("x-api-key", apiKey || "");
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      signOut("That API key was not accepted.");
      throw new Unauthorized();
    }
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error.message;
      } catch (_) {
        /* not JSON */
      }
      throw new HttpError(response.status, message);
    }
    return response;
  }

  const getJSON = async (path) => (await api(path)).json();

  function reportError(target, error) {
    if (error instanceof Unauthorized || error.name === "AbortError") return;
    $(target).textContent = String(error.message || error);
  }

  // Sign in ----------------------------------------------------------------------------------

  function signOut(message) {
    apiKey = null;
    sessionStorage.removeItem(KEY_STORAGE);
    if (current) current.stop();
    current = null;
    setConnection("", "");
    show("login");
    $("#login-error").textContent = message || "";
    $("#api-key").value = "";
    $("#api-key").focus();
  }

  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    apiKey = $("#api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    try {
      await getJSON("/v1/sessions?limit=1");
    } catch (error) {
      reportError("#login-error", error);
      return;
    }
    $("#login-error").textContent = "";
    route();
  });
  $("#sign-out").addEventListener("click", () => signOut(""));

  // What the other scripts (trail.js, lists.js, pages.js) use from this one.
  const context = {
    $, h, api, getJSON, reportError, setConnection, show, int, seconds, dollars, statusBadge, attentionLabel,
    clock, between, textOf,
  };
  const figuresFor = window.TetherUI.figures(context); // figures.js
  context.figuresFor = figuresFor;

  // Routing ----------------------------------------------------------------------------------

  function route() {
    if (current) current.stop();
    current = null;
    if (!apiKey) {
      signOut("");
      return;
    }
    const match = location.hash.match(/^#\/sessions\/([A-Za-z0-9_-]+)$/);
    const pageMatch = location.hash.match(/^#\/(agents|environments|tunnels|vaults|mcp)$/);
    if (match) current = sessionView(match[1]);
    else if (pageMatch) current = window.TetherUI.resourcePage(context, pageMatch[1]);
    else current = window.TetherUI.listView(context);
  }
  window.addEventListener("hashchange", route);

  // One session ------------------------------------------------------------------------------

  function sessionView(sessionId) {
    show("session-view");
    $("#session-header").replaceChildren(h("h1", null, sessionId));
    $("#session-figures").replaceChildren();
    $("#session-error").textContent = "";
    const controller = new AbortController();
    const report = (error) => {
      if (!error) $("#session-error").textContent = "";
      else reportError("#session-error", error);
    };
    const Timeline = window.TetherUI.trail(context);
    const timeline = new Timeline($("#timeline"), $("#timeline-empty"), {
      confirm: (useId) => window.TetherUI.confirmControls({ api, h, sessionId, useId, report }),
    });
    let refreshTimer = null;
    let stopped = false;

    async function loadSession() {
      try {
        const [session, insight] = await Promise.all([
          getJSON(`/v1/sessions/${sessionId}`),
          getJSON(`/v1/tether/sessions/${sessionId}/insights`),
        ]);
        if (stopped) return;
        renderHeader(session);
        $("#session-figures").replaceChildren(...figuresFor(insight, false));
      } catch (error) {
        reportError("#session-error", error);
      }
    }

    function refreshSoon() {
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(loadSession, 300);
    }

    timeline.onStatus = refreshSoon;
    window.TetherUI.actionBar({ api, $, sessionId, signal: controller.signal, report, done: loadSession });
    loadSession();
    follow(sessionId, timeline, controller.signal).catch((error) => reportError("#session-error", error));
    return {
      stop() {
        stopped = true;
        clearTimeout(refreshTimer);
        timeline.stop();
        controller.abort();
      },
    };
  }

  function renderHeader(session) {
    const agent = session.agent || {};
    const model = agent.model && typeof agent.model === "object" ? agent.model.id : agent.model;
    $("#session-header").replaceChildren(
      h("h1", null, session.title || session.id),
      h("span", { id: "session-status" }, statusBadge(session.status)),
      h("span", { class: "meta mono" }, session.id),
      h("span", { class: "meta" }, `agent ${agent.name || agent.id} v${agent.version}${model ? " · " + model : ""}`),
      h("span", { class: "meta" }, `created ${new Date(session.created_at).toLocaleString()}`),
      session.archived_at
        ? h("span", { id: "archived", class: "badge tag-error", title: session.archived_at }, "archived")
        : null,
      session.tether_attention
        ? h("span", { id: "attention", class: "badge attention" }, attentionLabel(session.tether_attention))
        : null,
    );
    for (const id of ["#send-message", "#interrupt", "#archive"]) $(id).disabled = Boolean(session.archived_at);
  }

  async function allEvents(sessionId, signal) {
    const events = [];
    let page = null;
    do {
      const query = new URLSearchParams({ limit: "1000" });
      if (page) query.set("page", page);
      const body = await (await api(`/v1/sessions/${sessionId}/events?${query}`, { signal })).json();
      events.push(...body.data);
      page = body.next_page;
    } while (page);
    return events;
  }

  // History first, then the live stream from the last event seen. With an empty history the
  // stream starts at the log's end, so the history is read again once the stream is open:
  // nothing appended in between is missed, and duplicates are dropped by id.
  async function follow(sessionId, timeline, signal) {
    for (const event of await allEvents(sessionId, signal)) timeline.add(event);
    let lastId = timeline.lastId;
    let backoff = 500;
    while (!signal.aborted) {
      setConnection("connecting", "down");
      try {
        const headers = { accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await api(`/v1/sessions/${sessionId}/events/stream?event_deltas=tether.tool_progress`, { headers, signal });
        setConnection("live", "live");
        backoff = 500;
        if (!lastId) {
          for (const event of await allEvents(sessionId, signal)) timeline.add(event);
        }
        await readEventStream(response, (event) => {
          timeline.add(event);
          if (event.id) lastId = event.id; // previews (tool progress) have no id
        });
        lastId = lastId || timeline.lastId;
      } catch (error) {
        if (signal.aborted || error instanceof Unauthorized) return;
        if (error instanceof HttpError && error.status === 404) {
          setConnection("session deleted", "down");
          return;
        }
        lastId = lastId || timeline.lastId;
      }
      if (signal.aborted) return;
      setConnection(`reconnecting in ${Math.round(backoff / 1000)} s`, "down");
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  async function readEventStream(response, onEvent) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = "message";
        const data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (type !== "ping" && data.length) onEvent(JSON.parse(data.join("\n")));
      }
    }
  }

  route();
})();
