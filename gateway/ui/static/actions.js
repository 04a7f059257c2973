// Tether console: what an operator can do to one session (a plain script, no build step).
//
// Every action goes through the same public REST API the SDK uses, with the key the page
// holds: POST /v1/sessions/{id}/events (user.message, user.interrupt, user.tool_confirmation)
// and POST /v1/sessions/{id}/archive. The page never decides anything itself: what the API
// refuses (a call already answered, an archived session) is shown as the API's message.
"use strict";

window.TetherUI = window.TetherUI || {};

(() => {
  const UI = window.TetherUI;

  // POST a JSON body with the page's key; resolves to the parsed answer.
  async function post(api, path, body) {
    const response = await api(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    return response.json();
  }

  const sendEvents = (api, sessionId, events) => post(api, `/v1/sessions/${sessionId}/events`, { events });

  // The bar under the session header: send a message, interrupt, archive. ``signal`` ends the
  // listeners with the view; ``report`` shows an error, ``done`` refreshes the header.
  UI.actionBar = function actionBar({ api, $, sessionId, signal, report, done }) {
    const form = $("#message-form");
    const text = $("#message-text");
    const status = $("#action-status");
    const say = (message) => {
      status.textContent = message;
    };
    const guarded = (button, work) => async (event) => {
      if (event) event.preventDefault();
      button.disabled = true;
      try {
        await work();
        report("");
      } catch (error) {
        report(error);
      } finally {
        button.disabled = false;
      }
    };
    form.addEventListener(
      "submit",
      guarded($("#send-message"), async () => {
        const message = text.value.trim();
        if (!message) return;
        await sendEvents(api, sessionId, [{ type: "user.message", content: [{ type: "text", text: message }] }]);
        text.value = "";
        say("message sent");
      }),
      { signal },
    );
    $("#interrupt").addEventListener(
      "click",
      guarded($("#interrupt"), async () => {
        await sendEvents(api, sessionId, [{ type: "user.interrupt" }]);
        say("interrupt sent");
      }),
      { signal },
    );
    $("#archive").addEventListener(
      "click",
      guarded($("#archive"), async () => {
        await post(api, `/v1/sessions/${sessionId}/archive`);
        say("session archived");
        done();
      }),
      { signal },
    );
    text.value = "";
    say("");
  };

  // Approve / deny (with a reason) on a tool call that waits for a confirmation. ``h`` builds
  // elements; the returned element is removed by the timeline once the call is answered.
  UI.confirmControls = function confirmControls({ api, h, sessionId, useId, report }) {
    const reason = h("input", {
      class: "deny-reason",
      type: "text",
      placeholder: "reason for denying (optional)",
      "aria-label": "reason for denying",
      maxlength: "2000",
    });
    const answer = (result) => async () => {
      for (const button of box.querySelectorAll("button")) button.disabled = true;
      const event = { type: "user.tool_confirmation", tool_use_id: useId, result };
      if (result === "deny" && reason.value.trim()) event.deny_message = reason.value.trim();
      try {
        await sendEvents(api, sessionId, [event]);
        report("");
      } catch (error) {
        report(error);
        for (const button of box.querySelectorAll("button")) button.disabled = false;
      }
    };
    const box = h(
      "span",
      { class: "decide" },
      h("button", { class: "approve", type: "button", onclick: answer("allow") }, "Approve"),
      reason,
      h("button", { class: "deny", type: "button", onclick: answer("deny") }, "Deny"),
    );
    return box;
  };
})();
