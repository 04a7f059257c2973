// Tether console: read-only pages for agents, environments, tunnels, vaults and the MCP
// gateway (a plain script, no build step).
//
// Vault pages show names and credential metadata only: every field shown is picked by name
// (never "everything in the body"), and the API never sends secrets in the first place.
// MCP figures are counted from the gateway's audit records (/v1/mcp_audit), newest first,
// over at most AUDIT_PAGES pages: the page says how many calls it counted.
"use strict";

window.TetherUI = window.TetherUI || {};

(() => {
  const UI = window.TetherUI;
  const AUDIT_PAGES = 10;
  const TITLES = {
    agents: "Agents",
    environments: "Environments",
    tunnels: "Tunnels",
    vaults: "Vaults",
    mcp: "MCP gateway: virtual servers",
  };

  UI.resourcePage = function resourcePage(ctx, name) {
    const { $ } = ctx;
    ctx.show("resource-view");
    ctx.setConnection("", "");
    $("#resource-title").textContent = TITLES[name];
    $("#resource-note").textContent = "";
    $("#resource-error").textContent = "";
    $("#resource-body").replaceChildren();
    let stopped = false;
    RENDER[name](ctx)
      .then((parts) => {
        if (!stopped) $("#resource-body").replaceChildren(...parts);
      })
      .catch((error) => ctx.reportError("#resource-error", error));
    return {
      stop() {
        stopped = true;
      },
    };
  };

  async function all(ctx, path, maxPages = 20) {
    const items = [];
    let page = null;
    let pages = 0;
    do {
      const params = new URLSearchParams({ limit: "100" });
      if (page) params.set("page", page);
      const body = await ctx.getJSON(`${path}${path.includes("?") ? "&" : "?"}${params}`);
      items.push(...body.data);
      page = body.next_page;
      pages += 1;
    } while (page && pages < maxPages);
    return { items, complete: !page };
  }

  function table(ctx, id, headers, rows) {
    const { h } = ctx;
    return h(
      "table",
      { id, class: "sessions resources" },
      h("thead", null, h("tr", null, headers.map((title) => h("th", null, title)))),
      h("tbody", null, rows),
    );
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

  const RENDER = {
    async agents(ctx) {
      const { h } = ctx;
      const { items } = await all(ctx, "/v1/agents");
      const rows = items.map((agent) => {
        const model = agent.model && typeof agent.model === "object" ? agent.model.id : agent.model;
        return h("tr", { dataset: { id: agent.id } },
          h("td", null, agent.name, h("div", { class: "muted mono" }, agent.id)),
          h("td", null, model || ""),
          h("td", { class: "num" }, `v${agent.version}`),
          h("td", null, (agent.tools || []).map((t) => t.name || t.type).join(", ")),
          h("td", null, (agent.mcp_servers || []).map((s) => s.name).join(", ")),
          h("td", null, h("a", { href: "#/" }, "sessions")),
          h("td", { class: "muted" }, agent.archived_at ? "archived" : when(agent.created_at)));
      });
      return [table(ctx, "agents", ["Agent", "Model", "Version", "Tools", "MCP servers", "", "Created"], rows)];
    },

    async environments(ctx) {
      const { h } = ctx;
      const { items } = await all(ctx, "/v1/environments");
      const rows = await Promise.all(
        items.map(async (env) => {
          const type = (env.config && env.config.type) || "cloud";
          let workers = "local sandboxes (this gateway)";
          if (type === "self_hosted") {
            const [stats, work] = await Promise.all([
              ctx.getJSON(`/v1/environments/${env.id}/work/stats`),
              ctx.getJSON(`/v1/environments/${env.id}/work?limit=100`),
            ]);
            const holding = new Set(
              work.data
                .filter((item) => item.state === "starting" || item.state === "active")
                .map((item) => (item.metadata || {}).worker_id)
                .filter(Boolean),
            );
            workers = `${stats.workers_polling} polling · ${stats.depth} queued · ${stats.pending} running` +
              (holding.size ? ` · workers: ${[...holding].sort().join(", ")}` : "");
          }
          return h("tr", { dataset: { id: env.id } },
            h("td", null, env.name, h("div", { class: "muted mono" }, env.id)),
            h("td", null, type),
            h("td", { class: "workers" }, workers),
            h("td", { class: "muted" }, env.archived_at ? "archived" : when(env.created_at)));
        }),
      );
      return [table(ctx, "environments", ["Environment", "Type", "Runs on", "Created"], rows)];
    },

    async tunnels(ctx) {
      const { h } = ctx;
      const { items } = await all(ctx, "/v1/tunnels");
      const rows = await Promise.all(
        items.map(async (tunnel) => {
          const live = await ctx.getJSON(`/v1/tether/tunnels/${tunnel.id}/connections`);
          const agents = live.data.length
            ? live.data.map((c) => `${c.agent_id} (slot ${c.slot}, ${ctx.seconds(c.connected_seconds)})`).join(", ")
            : "no agent connected";
          return h("tr", { dataset: { id: tunnel.id } },
            h("td", null, tunnel.display_name || tunnel.id, h("div", { class: "muted mono" }, tunnel.id)),
            h("td", { class: "mono" }, tunnel.domain || ""),
            h("td", { class: "agents" }, agents),
            h("td", { class: "muted" }, tunnel.archived_at ? "archived" : when(tunnel.created_at)));
        }),
      );
      return [table(ctx, "tunnels", ["Tunnel", "Domain", "Connected agents", "Created"], rows)];
    },

    async vaults(ctx) {
      const { h } = ctx;
      ctx.$("#resource-note").textContent = "Names and credential metadata only: secrets never leave the vault.";
      const { items } = await all(ctx, "/v1/vaults");
      return Promise.all(
        items.map(async (vault) => {
          const { items: credentials } = await all(ctx, `/v1/vaults/${vault.id}/credentials`);
          const rows = credentials.map((cred) => {
            const auth = cred.auth || {};
            return h("tr", { dataset: { id: cred.id } },
              h("td", null, cred.display_name || "", h("div", { class: "muted mono" }, cred.id)),
              h("td", null, auth.type || ""),
              h("td", { class: "mono" }, auth.mcp_server_url || auth.secret_name || ""),
              h("td", { class: "muted" }, cred.archived_at ? "archived" : when(cred.created_at)));
          });
          return h("section", { class: "vault", dataset: { id: vault.id } },
            h("h2", null, vault.display_name || vault.name || vault.id, " ", h("span", { class: "muted mono" }, vault.id)),
            rows.length
              ? table(ctx, `credentials-${vault.id}`, ["Credential", "Type", "For", "Created"], rows)
              : h("p", { class: "muted" }, "No credentials."));
        }),
      );
    },

    async mcp(ctx) {
      const { h } = ctx;
      const { items: servers } = await all(ctx, "/v1/mcp_virtual_servers");
      const audit = await all(ctx, "/v1/mcp_audit", AUDIT_PAGES);
      ctx.$("#resource-note").textContent =
        `Calls and errors counted from the gateway's audit log: ${audit.items.length} ` +
        `${audit.complete ? "calls (all)" : "most recent calls"}.`;
      const counts = new Map(); // "server\ntool" -> { calls, errors }
      for (const record of audit.items) {
        if (record.method && record.method !== "tools/call") continue;
        const key = `${record.virtual_server}\n${record.tool}`;
        const count = counts.get(key) || { calls: 0, errors: 0 };
        count.calls += 1;
        if (record.outcome !== "ok") count.errors += 1;
        counts.set(key, count);
      }
      return Promise.all(
        servers.map(async (server) => {
          const tools = await ctx.getJSON(`/v1/mcp_virtual_servers/${server.id}/tools`);
          const rows = tools.data.map((tool) => {
            const count = counts.get(`${server.name}\n${tool.name}`) || { calls: 0, errors: 0 };
            return h("tr", { dataset: { tool: tool.name } },
              h("td", { class: "mono" }, tool.name),
              h("td", null, `${tool.upstream} · ${tool.upstream_tool}`),
              h("td", { class: "num calls" }, ctx.int.format(count.calls)),
              h("td", { class: "num errors" }, ctx.int.format(count.errors)));
          });
          return h("section", { class: "virtual-server", dataset: { id: server.id, name: server.name } },
            h("h2", null, server.name, " ", h("span", { class: "muted mono" }, server.id)),
            tools.unavailable && Object.keys(tools.unavailable).length
              ? h("p", { class: "error" }, `unavailable upstreams: ${Object.keys(tools.unavailable).sort().join(", ")}`)
              : null,
            table(ctx, `tools-${server.id}`, ["Tool", "Upstream", "Calls", "Errors"], rows));
        }),
      );
    },
  };
})();
