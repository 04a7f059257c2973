// Tether console: the session timeline (a plain script, no build step).
//
// Every event of the log becomes one row, inserted as text (never as HTML: tool output is
// untrusted). Tool calls link to their results, show their duration once answered and a
// running timer until then; a call waiting for a confirmation carries Approve / Deny
// controls (actions.js) until it is answered or interrupted. A running call's progress (a
// tether.tool_progress preview, never in the log) shows by its timer until the result comes.
"use strict";

window.TetherUI = window.TetherUI || {};

(() => {
  const RESULT_PREVIEW_CHARS = 4000;
  const MAX_DIFF_LINES = 400;
  const PROGRESS_LINES = 200; // streamed progress messages kept per pending call

  // Returns the Timeline class bound to app.js's helpers.
  window.TetherUI.trail = function trail(ctx) {
    const { $, h, int, seconds, clock, between, statusBadge, textOf } = ctx;

    // Timeline ---------------------------------------------------------------------------------

    const TIMER_MS = 1000;

    class Timeline {
      constructor(list, empty, controls) {
        this.controls = controls || {};
        this.timer = setInterval(() => this.tick(), TIMER_MS);
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

      stop() {
        clearInterval(this.timer);
      }

      // The running timer on every tool call still waiting for its result.
      tick() {
        for (const use of this.uses.values()) {
          if (use.done) continue;
          const started = Date.parse(use.event.processed_at);
          use.timer.textContent = seconds(Math.max(0, (Date.now() - started) / 1000));
        }
      }

      // A call that can no longer be confirmed loses its Approve/Deny controls.
      settle(use) {
        if (use && use.decide) {
          use.decide.remove();
          use.decide = null;
        }
      }

      add(event) {
        if (event && event.type === "tether.tool_progress") return this.progress(event);
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
          case "system.message":
            return this.row(event, "user",
              h("div", { class: "line" }, h("span", { class: "kind" }, "System")),
              h("div", { class: "text" }, textOf(event.content)));
          case "user.interrupt":
            for (const use of this.uses.values()) {
              this.settle(use);
              if (!use.done) {
                use.done = true; // interrupted: no result will come, so the timer stops
                use.timer.textContent = "";
              }
            }
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
        const timer = h("span", { class: "timer muted", title: "waiting for its result" });
        const decide = permission === "ask" && this.controls.confirm ? this.controls.confirm(event.id) : null;
        const where = event.mcp_server_name ? ` (${event.mcp_server_name})` : "";
        const lines = [
          h("div", { class: "line" },
            h("span", { class: "kind" }, "Tool"),
            h("span", { class: "mono" }, event.name + where),
            permission === "client"
              ? h("span", { class: "badge muted" }, "custom tool")
              : h("span", { class: `badge perm-${permission}`, title: "evaluated_permission" }, permission),
            confirmation,
            outcome,
            timer,
            decide),
        ];
        if (policy.rule) {
          const matched = (policy.matched || []).length ? ` · matched: ${policy.matched.join(", ")}` : "";
          lines.push(h("div", { class: "policy" }, `policy: ${policy.rule}${policy.message ? " — " + policy.message : ""}${matched}`));
        }
        lines.push(toolInput(event.name, event.input || {}));
        const row = this.row(event, "tool", ...lines);
        this.uses.set(event.id, { event, row, outcome, confirmation, timer, decide, done: false });
        return row;
      }

      // The latest progress of a pending call: "40% · message" next to its timer, and each
      // message as a line of streamed output under it. Text only: messages come from the tool.
      progress({ event_id: useId, progress, total, message }) {
        const use = this.uses.get(useId);
        if (!use || use.done || typeof progress !== "number") return;
        if (!use.progress) {
          use.progress = h("span", { class: "progress muted", title: "latest progress reported by the tool" });
          use.stream = h("pre", { class: "progress-output", title: "progress messages so far", hidden: true });
          use.timer.after(use.progress);
          use.timer.closest(".body").append(use.stream);
          use.lines = [];
        }
        const ratio = typeof total === "number" && total > 0 ? Math.min(1, Math.max(0, progress / total)) : null;
        const text = typeof message === "string" ? message : "";
        use.progress.textContent = [ratio === null ? String(progress) : `${Math.round(ratio * 100)}%`, text]
          .filter(Boolean).join(" · ");
        if (!text || use.lines[use.lines.length - 1] === text) return;
        use.lines = [...use.lines, text].slice(-PROGRESS_LINES);
        use.stream.textContent = use.lines.join("\n");
        use.stream.hidden = false;
      }

      confirmation(event) {
        const use = this.uses.get(event.tool_use_id);
        const denied = event.result === "deny";
        this.settle(use);
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
          this.settle(use);
          use.done = true;
          if (use.progress) [use.progress, use.stream].forEach((el) => el.remove()); // the result replaces them
          use.timer.className = "duration";
          use.timer.title = "tool duration";
          use.timer.textContent = seconds(Math.max(0, between(use.event.processed_at, event.processed_at)));
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

    return Timeline;
  };
})();
