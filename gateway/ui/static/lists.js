// Tether console: the session list (a plain script, no build step).
//
// Search and filters map one to one onto GET /v1/sessions's query parameters (q, status,
// agent_id, environment_id, needs_attention, created_at[gte|lte]); pages follow the API's
// cursor (next_page), and "previous" goes back through the cursors already seen. Where a
// session ran comes from its environment: a local sandbox, or for a self_hosted environment
// the worker that claimed its work item (the worker_id it records in the item's metadata).
"use strict";

window.TetherUI = window.TetherUI || {};

(() => {
  const UI = window.TetherUI;
  const LIST_REFRESH_MS = 5000;
  const SEARCH_DELAY_MS = 300;

  UI.listView = function listView(ctx) {
    const { $, h, getJSON, reportError, figuresFor } = ctx;
    ctx.show("list-view");
    ctx.setConnection("", "");
    let stopped = false;
    let timer = null;
    let searchTimer = null;
    let cursors = [null]; // cursors[i] opens page i; null is the first page
    let index = 0;
    let nextCursor = null;
    let generation = 0; // only the newest refresh may render: an older one can answer later
    const listeners = new AbortController();
    const on = (selector, type, handler) => $(selector).addEventListener(type, handler, { signal: listeners.signal });

    function query() {
      const params = new URLSearchParams({ limit: $("#f-limit").value });
      const text = $("#q").value.trim();
      if (text) params.set("q", text);
      for (const [param, id] of [["status", "#f-status"], ["agent_id", "#f-agent"], ["environment_id", "#f-environment"]]) {
        if ($(id).value) params.set(param, $(id).value);
      }
      if ($("#f-attention").checked) params.set("needs_attention", "true");
      for (const [param, id] of [["created_at[gte]", "#f-from"], ["created_at[lte]", "#f-to"]]) {
        const moment = $(id).value ? new Date($(id).value) : null;
        if (moment && !Number.isNaN(moment.getTime())) params.set(param, moment.toISOString());
      }
      if (cursors[index]) params.set("page", cursors[index]);
      return params;
    }

    async function refresh() {
      clearTimeout(timer);
      const mine = ++generation;
      if (!document.hidden) {
        try {
          const [sessions, insights, environments] = await Promise.all([
            getJSON(`/v1/sessions?${query()}`),
            getJSON("/v1/tether/insights?limit=50"),
            UI.environments(ctx),
          ]);
          const ranOn = await whereTheyRan(ctx, sessions.data, environments);
          if (!stopped && mine === generation) { // else a newer refresh (a click, a filter) renders
            $("#aggregate").replaceChildren(...figuresFor(insights.aggregate, true));
            renderTable(ctx, sessions.data, new Map(insights.data.map((row) => [row.session_id, row])), environments, ranOn);
            nextCursor = sessions.next_page;
            $("#next-page").disabled = !nextCursor;
            $("#prev-page").disabled = index === 0;
            $("#page-info").textContent = `page ${index + 1}`;
            $("#list-error").textContent = "";
          }
        } catch (error) {
          if (mine === generation) reportError("#list-error", error);
        }
      }
      if (!stopped && mine === generation) timer = setTimeout(refresh, LIST_REFRESH_MS);
      // How many refreshes have finished (rendered or, superseded, not): what a test waits for.
      const table = $("#sessions");
      table.dataset.settled = String(Number(table.dataset.settled || 0) + 1);
    }

    function restart() {
      cursors = [null];
      index = 0;
      refresh();
    }

    on("#filters", "submit", (event) => event.preventDefault());
    on("#filters", "change", (event) => {
      if (event.target.id !== "q") restart();
    });
    on("#q", "input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(restart, SEARCH_DELAY_MS);
    });
    on("#next-page", "click", () => {
      if (!nextCursor) return;
      cursors = cursors.slice(0, index + 1).concat([nextCursor]);
      index += 1;
      refresh();
    });
    on("#prev-page", "click", () => {
      if (index === 0) return;
      index -= 1;
      refresh();
    });
    fillChoices(ctx).catch((error) => reportError("#list-error", error));
    refresh();
    return {
      stop() {
        stopped = true;
        clearTimeout(timer);
        clearTimeout(searchTimer);
        listeners.abort();
      },
    };
  };

  // Every environment (id -> body), for names, the filter and where sessions run.
  UI.environments = async function environments(ctx) {
    const byId = new Map();
    let page = null;
    do {
      const params = new URLSearchParams({ limit: "100", include_archived: "true" });
      if (page) params.set("page", page);
      const body = await ctx.getJSON(`/v1/environments?${params}`);
      for (const env of body.data) byId.set(env.id, env);
      page = body.next_page;
    } while (page);
    return byId;
  };

  async function fillChoices(ctx) {
    const [agents, environments] = await Promise.all([
      ctx.getJSON("/v1/agents?limit=100"),
      UI.environments(ctx),
    ]);
    const fill = (select, items) => {
      const chosen = select.value;
      select.replaceChildren(
        ctx.h("option", { value: "" }, "any"),
        ...items.map((item) => ctx.h("option", { value: item.id }, `${item.name} (${item.id})`)),
      );
      select.value = chosen;
    };
    fill(ctx.$("#f-agent"), agents.data);
    fill(ctx.$("#f-environment"), [...environments.values()]);
  }

  // session id -> "local sandbox" | "worker <id>" | "waiting for a worker", from the work items
  // of the self_hosted environments on this page.
  async function whereTheyRan(ctx, sessions, environments) {
    const ranOn = new Map();
    const selfHosted = new Set();
    for (const session of sessions) {
      const env = environments.get(session.environment_id);
      if (env && env.config && env.config.type === "self_hosted") selfHosted.add(env.id);
      else ranOn.set(session.id, { text: "local sandbox", kind: "local" });
    }
    await Promise.all(
      [...selfHosted].map(async (envId) => {
        const work = await ctx.getJSON(`/v1/environments/${envId}/work?limit=100`);
        for (const item of work.data) {
          if (!item.data || ranOn.has(item.data.id)) continue;
          const worker = (item.metadata || {}).worker_id;
          const text = worker
            ? `worker ${worker}`
            : item.state === "queued" ? "waiting for a worker" : `self-hosted (${item.state})`;
          ranOn.set(item.data.id, { text, kind: "worker", title: `work ${item.id}: ${item.state}` });
        }
      }),
    );
    return ranOn;
  }

  function renderTable(ctx, sessions, insights, environments, ranOn) {
    const { h, int, seconds, dollars, statusBadge, attentionLabel } = ctx;
    const rows = sessions.map((session) => {
      const insight = insights.get(session.id);
      const usage = session.usage || {};
      const integ = insight && insight.integrity;
      const env = environments.get(session.environment_id);
      const where = ranOn.get(session.id) || { text: "self-hosted", kind: "worker" };
      const attention = session.tether_attention;
      return h(
        "tr",
        { dataset: { sessionId: session.id }, class: attention ? "needs-attention" : "" },
        h(
          "td",
          { class: "title" },
          h("a", { href: `#/sessions/${session.id}` }, session.title || session.id),
          session.title ? h("div", { class: "muted mono" }, session.id) : null,
        ),
        h(
          "td",
          { class: "status" },
          statusBadge(session.status),
          attention ? [" ", h("span", { class: "badge attention", title: attention }, attentionLabel(attention))] : null,
          session.archived_at ? [" ", h("span", { class: "badge muted" }, "archived")] : null,
        ),
        h("td", null, session.agent ? session.agent.name : ""),
        h("td", { class: "environment" }, env ? env.name : session.environment_id),
        h("td", { class: `ran-on ${where.kind}`, title: where.title || "" }, where.text),
        h("td", { class: "num" }, `${int.format(usage.input_tokens || 0)} / ${int.format(usage.output_tokens || 0)}`),
        h("td", { class: "num", title: insight && insight.estimated_cost ? insight.estimated_cost.basis : "" },
          insight ? dollars(insight.estimated_cost) : "—"),
        h("td", { class: "num" }, insight ? seconds(insight.duration_seconds) : "—"),
        h("td", { class: "num" }, insight ? insight.human_corrections.total : "—"),
        h("td", { class: "num" }, insight ? insight.recovery.total : "—"),
        h("td", null, integ ? h("span", { class: integ.ok ? "tag-ok" : "tag-error" }, integ.ok ? "✓ intact" : "✗ broken") : "—"),
        h("td", { class: "muted" }, new Date(session.created_at).toLocaleString()),
      );
    });
    ctx.$("#sessions tbody").replaceChildren(...rows);
    ctx.$("#sessions-empty").hidden = rows.length > 0;
  }
})();
