// Tether console: the figure cards of one session or of a fleet (a plain script, no build step).
//
// The insights API (/v1/tether/sessions/{id}/insights and the list's aggregate) answers with
// numbers; these cards say what each means. app.js builds figuresFor from its context and hands
// it to the session page and to lists.js. Every value is inserted as text.
"use strict";

window.TetherUI = window.TetherUI || {};

(() => {
  const UI = window.TetherUI;

  // ``ctx`` is app.js's context; returns figuresFor(insight, aggregate) -> [card elements].
  UI.figures = function figures(ctx) {
    const { h, int, seconds, dollars } = ctx;
    const plural = (n, one, many) => `${int.format(n)} ${n === 1 ? one : many || one + "s"}`;

    function figure(label, value, detail, tone) {
      return h(
        "div",
        { class: "figure" + (tone ? " " + tone : ""), dataset: { figure: label } },
        h("div", { class: "label" }, label),
        h("div", { class: "value" }, value),
        detail ? h("div", { class: "detail" }, detail) : null,
      );
    }

    return function figuresFor(insight, aggregate) {
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
    };
  };
})();
