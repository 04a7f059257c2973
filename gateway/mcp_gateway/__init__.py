"""The MCP gateway: one governed MCP endpoint per *virtual server* for any MCP client.

Upstream MCP servers (streamable HTTP URLs, possibly tunnelled, and stdio commands the
gateway supervises) are registered once. A virtual server is a named selection of their
tools, resources and prompts, served at ``/mcp/{name}`` to 2026-07-28 and to legacy
(2025-11-25, session-based) clients alike. Every call is authenticated, rate limited,
size and time bounded, decided by the policy engine, given vault credentials on the
last hop, protected by a per-upstream circuit breaker, and audited.

Modules, one job each:

- ``settings``: knobs read from the environment.
- ``schemas``: REST request bodies.
- ``registry``: upstream and virtual server documents in the Store, plus the config file.
- ``naming``: collision-aware exposed names for tools, prompts and resource URIs.
- ``breaker``: the per-upstream circuit breaker; ``backoff``: restart and redial delays.
- ``ratelimit``: per-caller token buckets.
- ``stdio_supervisor``: launching, restarting and reaping stdio servers.
- ``upstreams``: connecting to upstreams (HTTP or stdio) under breaker and timeout.
- ``http_upstream``: one HTTP upstream (SDK clients, the express lane's wire, its sessions).
- ``upstream_sessions``: the books of pooled sessions with session-based upstreams.
- ``sizing``: the message size limit, and closing the session of a cancelled call.
- ``watcher``: following upstream ``list_changed`` notifications.
- ``catalog``: upstream listings (cached) and each virtual server's merged view.
- ``credentials``: vault credentials for the last hop.
- ``notifications``: fanning ``list_changed`` out to connected clients of both eras.
- ``access``: API keys and scoped JWTs; 401/403 decisions.
- ``governance``: the policy decision and the limits for one call.
- ``audit``: one Store record per call.
- ``errors`` / ``rpc_errors``: upstream failures in words; the front door's JSON-RPC errors.
- ``context``: what the front door hands the handlers.
- ``tool_calls``: the governed ``tools/call`` pipeline both lanes share.
- ``virtual_server``: the MCP request handlers (the SDK path).
- ``wire``: speaking to an HTTP upstream without the SDK: a request, and a pooled session's life.
- ``express``: the express lane, 2026-07-28 ``tools/call`` without the SDK's dispatch.
- ``endpoint``: the ASGI front door for ``/mcp/{name}``.
- ``wiring``: assembling it all for ``gateway.app``.
"""
