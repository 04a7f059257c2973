// Tether session trail: a plain script, no build step.
//
// The page itself is public; every data call sends the API key from sessionStorage as
// x-api-key. Live updates read /events/stream with fetch (EventSource cannot send headers)
// and resume with Last-Event-ID, so a dropped connection never loses an event.
// Everything from the log is inserted as text (never as HTML): tool output is untrusted.
"use strict";

(() => {
  const KEY_STORAGE = "tether.apiKey";
  const LIST_REFRESH_MS = 5000;
  const RESULT_PREVIEW_CHARS = 4000;
  const MAX_DIFF_LINES = 400;

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
    for (const section of ["login", "list-view", "session-view"]) {
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
  const plural = (n, one, many) => `${int.format(n)} ${n === 1 ? one : many || one + "s"}`;

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

  // Routing ----------------------------------------------------------------------------------

  function route() {
    if (current) current.stop();
    current = null;
    if (!apiKey) {
      signOut("");
      return;
    }
    const match = location.hash.match(/^#\/sessions\/([A-Za-z0-9_-]+)$/);
    current = match ? sessionView(match[1]) : listView();
  }
  window.addEventListener("hashchange", route);

  // Figures ----------------------------------------------------------------------------------

  function figure(label, value, detail, tone) {
    return h(
      "div",
      { class: "figure" + (tone ? " " + tone : ""), dataset: { figure: label } },
      h("div", { class: "label" }, label),
      h("div", { class: "value" }, value),
      detail ? h("div", { class: "detail" }, detail) : null,
    );
  }

  function figuresFor(insight, aggregate) {
    const corrections = insight.human_corrections;
    const recovery = insight.recovery;
    const parts = [];
    if (aggregate) {
      const ttfuo = insight.time_to_first_useful_output_seconds;
      parts.push(
        figure("Time to first useful output", seconds(ttfuo.p50), `median of ${ttfuo.count}; p90 ${seconds(ttfuo.p90)}`),
      );
    } else {
      parts.push(
        figure(
          "Time to first useful output",
          seconds(insight.time_to_first_useful_output_seconds),
          insight.first_useful_output ? `first: ${insight.first_useful_output.type}` : "no useful output yet",
        ),
      );
    }
    parts.push(
      figure(
        "Human corrections",
        int.format(corrections.total),
        `${corrections.denials} denied · ${plural(corrections.interrupts, "interrupt")} · ${plural(corrections.follow_up_messages, "follow-up")}` +
          (aggregate && corrections.per_session !== null ? ` · ${corrections.per_session} per session` : ""),
        corrections.total ? "" : "good",
      ),
      figure(
        "Recovery events",
        int.format(recovery.total),
        `${plural(recovery.model_retries, "model retry", "model retries")} · ${plural(recovery.reschedules, "reschedule")} · ${plural(recovery.restarts_survived, "restart", "restarts")} survived`,
      ),
    );
    if (aggregate) {
      const integ = insight.integrity;
      const broken = integ.broken.length;
      parts.push(
        figure(
          "Audit trail",
          broken ? `${broken} broken` : `${integ.intact}/${integ.verified} intact`,
          broken ? `broken: ${integ.broken.join(", ")}` : "hash chains verified",
          broken ? "bad" : "good",
        ),
      );
    } else if (insight.integrity) {
      const integ = insight.integrity;
      parts.push(
        figure(
          "Audit trail",
          integ.ok ? "intact" : "BROKEN",
          integ.ok
            ? `${integ.events} events chained`
            : `at seq ${integ.broken_at.seq} (${integ.broken_at.event_id}): ${integ.broken_at.reason}`,
          integ.ok ? "good" : "bad",
        ),
      );
    }
    const usage = insight.usage;
    const cost = insight.estimated_cost;
    // With prompt caching most input is billed as cache reads and writes: show them next to the cost.
    const cached = usage.cache_read_input_tokens || usage.cache_creation_input_tokens
      ? `${int.format(usage.cache_read_input_tokens || 0)} cache read · ` +
        `${int.format(usage.cache_creation_input_tokens || 0)} cache write · `
      : "";
    parts.push(
      figure(
        "Tokens",
        `${int.format(usage.input_tokens)} in / ${int.format(usage.output_tokens)} out`,
        cached + (cost
          ? `${dollars(cost)} — estimate at list prices${cost.priced_as ? " (" + cost.priced_as + ")" : ""}`
          : "cost: no estimate for this model"),
      ),
    );
    if (!aggregate) {
      parts.push(
        figure(
          "Model calls",
          int.format(insight.model_calls.count),
          `${insight.model_calls.failed} failed · mean ${seconds(insight.model_calls.mean_latency_seconds)}`,
        ),
        figure("Tool calls", int.format(insight.tool_calls.count), `${insight.tool_calls.errors} errors`),
      );
    }
    for (const part of parts) {
      const title = cost && part.dataset.figure === "Tokens" ? cost.basis : "";
      if (title) part.title = title;
    }
    return parts;
  }

  // Session list -----------------------------------------------------------------------------

  function listView() {
    show("list-view");
    setConnection("", "");
    let stopped = false;
    let timer = null;

    async function refresh() {
      if (!document.hidden) {
        try {
          const [sessions, insights] = await Promise.all([
            getJSON("/v1/sessions?limit=50"),
            getJSON("/v1/tether/insights?limit=50"),
          ]);
          if (stopped) return;
          $("#aggregate").replaceChildren(...figuresFor(insights.aggregate, true));
          renderTable(sessions.data, new Map(insights.data.map((row) => [row.session_id, row])));
          $("#list-error").textContent = "";
        } catch (error) {
          reportError("#list-error", error);
        }
      }
      if (!stopped) timer = setTimeout(refresh, LIST_REFRESH_MS);
    }

    refresh();
    return {
      stop() {
        stopped = true;
        clearTimeout(timer);
      },
    };
  }

  function renderTable(sessions, insights) {
    const rows = sessions.map((session) => {
      const insight = insights.get(session.id);
      const usage = session.usage || {};
      const integ = insight && insight.integrity;
      return h(
        "tr",
        { dataset: { sessionId: session.id } },
        h(
          "td",
          { class: "title" },
          h("a", { href: `#/sessions/${session.id}` }, session.title || session.id),
          session.title ? h("div", { class: "muted mono" }, session.id) : null,
        ),
        h("td", null, statusBadge(session.status)),
        h("td", null, session.agent ? session.agent.name : ""),
        h("td", { class: "num" }, `${int.format(usage.input_tokens || 0)} / ${int.format(usage.output_tokens || 0)}`),
        h("td", { class: "num", title: insight && insight.estimated_cost ? insight.estimated_cost.basis : "" },
          insight ? dollars(insight.estimated_cost) : "—"),
        h("td", { class: "num" }, insight ? seconds(insight.duration_seconds) : "—"),
        h("td", { class: "num" }, insight ? seconds(insight.time_to_first_useful_output_seconds) : "—"),
        h("td", { class: "num" }, insight ? insight.human_corrections.total : "—"),
        h("td", { class: "num" }, insight ? insight.recovery.total : "—"),
        h("td", null, integ ? h("span", { class: integ.ok ? "tag-ok" : "tag-error" }, integ.ok ? "✓ intact" : "✗ broken") : "—"),
        h("td", { class: "muted" }, new Date(session.created_at).toLocaleString()),
      );
    });
    $("#sessions tbody").replaceChildren(...rows);
    $("#sessions-empty").hidden = rows.length > 0;
  }

  // One session ------------------------------------------------------------------------------

  function sessionView(sessionId) {
    show("session-view");
    $("#session-header").replaceChildren(h("h1", null, sessionId));
    $("#session-figures").replaceChildren();
    $("#session-error").textContent = "";
    const timeline = new Timeline($("#timeline"), $("#timeline-empty"));
    const controller = new AbortController();
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
    loadSession();
    follow(sessionId, timeline, controller.signal).catch((error) => reportError("#session-error", error));
    return {
      stop() {
        stopped = true;
        clearTimeout(refreshTimer);
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
    );
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
        const response = await api(`/v1/sessions/${sessionId}/events/stream`, { headers, signal });
        setConnection("live", "live");
        backoff = 500;
        if (!lastId) {
          for (const event of await allEvents(sessionId, signal)) timeline.add(event);
        }
        await readEventStream(response, (event) => {
          timeline.add(event);
          lastId = event.id;
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

  // Timeline ---------------------------------------------------------------------------------

  class Timeline {
    constructor(list, empty) {
      this.list = list;
      this.empty = empty;
      this.list.replaceChildren();
      this.empty.hidden = false;
      this.seen = new Set();
      this.lastId = null;
      this.lastAt = "";
      this.firstUserAt = null;
      this.responded = false;
      this.uses = new Map(); // tool use id -> { event, row }
      this.models = new Map(); // span.model_request_start id -> { event, row }
      this.onStatus = () => {};
    }

    add(event) {
      if (!event || this.seen.has(event.id)) return;
      this.seen.add(event.id);
      if (!this.lastAt || event.processed_at >= this.lastAt) {
        this.lastAt = event.processed_at;
        this.lastId = event.id;
      }
      if (event.type === "user.message" && !this.firstUserAt) this.firstUserAt = event.processed_at;
      const row = this.render(event);
      if (row) this.insert(row, event);
      if (this.firstUserAt && (event.type.startsWith("agent.") || event.type === "session.status_idle")) {
        this.responded = true;
      }
      if (event.type.startsWith("session.status_")) this.onStatus(event);
      this.empty.hidden = this.list.children.length > 0;
    }

    insert(row, event) {
      row.dataset.at = event.processed_at || "";
      const last = this.list.lastElementChild;
      if (!last || (last.dataset.at || "") <= row.dataset.at) {
        this.list.append(row);
        return;
      }
      for (const child of this.list.children) {
        if ((child.dataset.at || "") > row.dataset.at) {
          this.list.insertBefore(row, child);
          return;
        }
      }
      this.list.append(row);
    }

    row(event, classes, ...body) {
      const offset = this.firstUserAt ? between(this.firstUserAt, event.processed_at) : null;
      return h(
        "li",
        { class: "ev " + classes, id: `ev-${event.id}`, dataset: { type: event.type, eventId: event.id } },
        h("time", { datetime: event.processed_at, title: event.processed_at }, clock(event.processed_at)),
        h("span", { class: "offset" }, offset === null || offset < 0 ? "" : "+" + seconds(offset)),
        h("div", { class: "body" }, ...body),
      );
    }

    jump(eventId, label) {
      return h(
        "button",
        {
          class: "link",
          type: "button",
          onclick: () => {
            const target = document.getElementById(`ev-${eventId}`);
            if (!target) return;
            target.scrollIntoView({ behavior: "smooth", block: "center" });
            target.classList.add("highlight");
            setTimeout(() => target.classList.remove("highlight"), 1500);
          },
        },
        label,
      );
    }

    render(event) {
      const t = event.type;
      switch (t) {
        case "user.message": {
          const followUp = this.firstUserAt !== event.processed_at && this.responded;
          return this.row(
            event,
            "user",
            h("div", { class: "line" }, h("span", { class: "kind" }, "User"),
              followUp ? h("span", { class: "badge tag-correction" }, "follow-up (correction)") : null),
            h("div", { class: "text" }, textOf(event.content)),
          );
        }
        case "user.interrupt":
          return this.row(event, "user",
            h("div", { class: "line" }, h("span", { class: "kind" }, "Interrupt"),
              h("span", { class: "badge tag-correction" }, "correction")));
        case "user.tool_confirmation":
          return this.confirmation(event);
        case "user.custom_tool_result":
          return this.result(event, event.custom_tool_use_id);
        case "agent.message":
          return this.row(event, "agent-message",
            h("div", { class: "line" }, h("span", { class: "kind" }, "Agent")),
            h("div", { class: "text" }, textOf(event.content)));
        case "agent.thinking":
          return this.row(event, "agent", h("span", { class: "kind muted" }, "Thinking"));
        case "agent.tool_use":
        case "agent.mcp_tool_use":
        case "agent.custom_tool_use":
          return this.toolUse(event);
        case "agent.tool_result":
          return this.result(event, event.tool_use_id);
        case "agent.mcp_tool_result":
          return this.result(event, event.mcp_tool_use_id);
        case "span.model_request_start":
          return this.modelStart(event);
        case "span.model_request_end":
          return this.modelEnd(event);
        case "session.error":
          return this.error(event);
        case "agent.thread_context_compacted":
          return this.row(event, "status", h("span", null, "Context compacted"));
        default:
          if (t.startsWith("session.status_")) return this.status(event);
          return this.row(event, "", h("span", { class: "kind" }, t),
            h("details", null, h("summary", null, "event"), h("pre", null, JSON.stringify(event, null, 2))));
      }
    }

    status(event) {
      const status = event.type.replace("session.status_", "");
      const label = { rescheduled: "rescheduling" }[status] || status;
      const badge = $("#session-status");
      if (badge) badge.replaceChildren(statusBadge(label));
      const parts = [h("span", null, "Session "), statusBadge(label)];
      const reason = event.stop_reason;
      if (reason) {
        parts.push(h("span", null, ` · ${reason.type}`));
        for (const id of reason.event_ids || []) {
          const use = this.uses.get(id);
          parts.push(" ", this.jump(id, use ? `waiting on ${use.event.name}` : id));
        }
      }
      if (status === "rescheduled") parts.push(h("span", { class: "badge tag-retry" }, "recovery"));
      return this.row(event, "status", h("div", { class: "line" }, ...parts));
    }

    modelStart(event) {
      const latency = h("span", { class: "spinner muted" }, "in flight");
      const usage = h("span", { class: "muted" });
      const row = this.row(event, "model",
        h("div", { class: "line" }, h("span", { class: "kind" }, "Model call"), latency, usage));
      this.models.set(event.id, { event, row, latency, usage });
      return row;
    }

    modelEnd(event) {
      const start = this.models.get(event.model_request_start_id);
      const usage = event.model_usage || {};
      const tokens = `${int.format(usage.input_tokens || 0)} in · ${int.format(usage.output_tokens || 0)} out` +
        (usage.cache_read_input_tokens ? ` · ${int.format(usage.cache_read_input_tokens)} cache read` : "") +
        (usage.cache_creation_input_tokens ? ` · ${int.format(usage.cache_creation_input_tokens)} cache write` : "");
      if (!start) {
        return this.row(event, event.is_error ? "is-error" : "model",
          h("div", { class: "line" }, h("span", { class: "kind" }, "Model call ended"), h("span", { class: "muted" }, tokens)));
      }
      const took = between(start.event.processed_at, event.processed_at);
      start.row.dataset.ended = "true";
      start.latency.className = "";
      start.latency.replaceChildren(h("span", { class: "latency" }, seconds(took)));
      if (event.is_error) start.latency.append(" ", h("span", { class: "badge tag-error" }, "failed"));
      if (event.is_error) start.row.classList.add("is-error");
      else start.usage.textContent = tokens;
      return null;
    }

    error(event) {
      const error = event.error || {};
      const retry = (error.retry_status || {}).type;
      const badges = [h("span", { class: "badge tag-error" }, error.type || "error")];
      if (retry === "retrying") badges.push(h("span", { class: "badge tag-retry" }, "retrying (recovery)"));
      else if (retry) badges.push(h("span", { class: "badge muted" }, retry));
      if (error.mcp_server_name) badges.push(h("span", { class: "muted" }, `MCP server ${error.mcp_server_name}`));
      return this.row(event, "error",
        h("div", { class: "line" }, h("span", { class: "kind" }, "Error"), ...badges),
        h("div", { class: "text" }, error.message || ""));
    }

    toolUse(event) {
      const policy = event.tether_policy || {};
      const permission = event.type === "agent.custom_tool_use" ? "client" : event.evaluated_permission || "allow";
      const outcome = h("span", { class: "outcome spinner muted" }, permission === "client" ? "awaiting client" : "pending");
      const confirmation = h("span", { class: "confirmation" });
      const where = event.mcp_server_name ? ` (${event.mcp_server_name})` : "";
      const lines = [
        h("div", { class: "line" },
          h("span", { class: "kind" }, "Tool"),
          h("span", { class: "mono" }, event.name + where),
          permission === "client"
            ? h("span", { class: "badge muted" }, "custom tool")
            : h("span", { class: `badge perm-${permission}`, title: "evaluated_permission" }, permission),
          confirmation,
          outcome),
      ];
      if (policy.rule) {
        const matched = (policy.matched || []).length ? ` · matched: ${policy.matched.join(", ")}` : "";
        lines.push(h("div", { class: "policy" }, `policy: ${policy.rule}${policy.message ? " — " + policy.message : ""}${matched}`));
      }
      lines.push(toolInput(event.name, event.input || {}));
      const row = this.row(event, "tool", ...lines);
      this.uses.set(event.id, { event, row, outcome, confirmation });
      return row;
    }

    confirmation(event) {
      const use = this.uses.get(event.tool_use_id);
      const denied = event.result === "deny";
      if (use) {
        use.confirmation.replaceChildren(
          h("span", { class: `badge perm-${denied ? "deny" : "allow"}` }, denied ? "user denied" : "user allowed"));
      }
      return this.row(event, "user",
        h("div", { class: "line" },
          h("span", { class: "kind" }, "Confirmation"),
          h("span", { class: `badge perm-${denied ? "deny" : "allow"}` }, event.result),
          denied ? h("span", { class: "badge tag-correction" }, "correction") : null,
          this.jump(event.tool_use_id, use ? `for ${use.event.name}` : event.tool_use_id)),
        event.deny_message ? h("div", { class: "text" }, event.deny_message) : null);
    }

    result(event, useId) {
      const use = this.uses.get(useId);
      const text = textOf(event.content);
      if (use) {
        use.outcome.className = "outcome";
        use.outcome.replaceChildren(this.jump(event.id, event.is_error ? "✗ error result" : "✓ result"));
        if (event.is_error) use.row.classList.add("is-error");
      }
      const body = text.length > RESULT_PREVIEW_CHARS
        ? h("details", null, h("summary", null, `${text.length} characters`), h("pre", null, text))
        : h("pre", null, text || "(empty)");
      return this.row(event, "tool" + (event.is_error ? " is-error" : ""),
        h("div", { class: "line" },
          h("span", { class: "kind" }, "Result"),
          event.is_error ? h("span", { class: "badge tag-error" }, "error") : h("span", { class: "badge tag-ok" }, "ok"),
          this.jump(useId, use ? `of ${use.event.name}` : useId)),
        body);
    }
  }

  // Tool inputs: file changes as diffs, commands as commands, anything else as JSON.

  function toolInput(name, input) {
    if (name === "edit" && typeof input.old_string === "string" && typeof input.new_string === "string") {
      return diffView(input.file_path, lineDiff(input.old_string, input.new_string),
        input.replace_all ? "every occurrence" : "");
    }
    if (name === "write" && typeof input.content === "string") {
      const lines = input.content.split("\n");
      if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop(); // a final newline ends a line
      return diffView(input.file_path, lines.map((text) => ["add", text]), "whole file");
    }
    if (name === "bash" && typeof input.command === "string") {
      return h("pre", { class: "command" }, "$ " + input.command);
    }
    const json = JSON.stringify(input, null, 2);
    return json === "{}" ? null : h("details", { open: json.length < 600 }, h("summary", null, "input"), h("pre", null, json));
  }

  function diffView(path, lines, note) {
    return h("div", { class: "diff" },
      h("div", { class: "path mono" }, path || "(no path)", note ? h("span", { class: "muted" }, ` — ${note}`) : null),
      h("pre", null, lines.map(([kind, text]) => h("span", { class: `l ${kind}` }, text + "\n"))));
  }

  // Line diff by longest common subsequence; past MAX_DIFF_LINES it shows old then new.
  function lineDiff(before, after) {
    const a = before.split("\n");
    const b = after.split("\n");
    if (a.length > MAX_DIFF_LINES || b.length > MAX_DIFF_LINES) {
      return [...a.map((l) => ["del", l]), ...b.map((l) => ["add", l])];
    }
    const table = Array.from({ length: a.length + 1 }, () => new Uint16Array(b.length + 1));
    for (let i = a.length - 1; i >= 0; i--) {
      for (let j = b.length - 1; j >= 0; j--) {
        table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
      }
    }
    const out = [];
    let i = 0;
    let j = 0;
    while (i < a.length && j < b.length) {
      if (a[i] === b[j]) {
        out.push(["same", a[i]]);
        i++;
        j++;
      } else if (table[i + 1][j] >= table[i][j + 1]) {
        out.push(["del", a[i++]]);
      } else {
        out.push(["add", b[j++]]);
      }
    }
    while (i < a.length) out.push(["del", a[i++]]);
    while (j < b.length) out.push(["add", b[j++]]);
    return out;
  }

  route();
})();
