"""The on-prem tunnel agent, and the tunnel protocol both ends share.

The agent dials out to the gateway over WebSockets (``connector``), carries many streams
per connection (``mux`` over ``protocol`` frames), and serves each stream as one HTTP
request to an on-prem target (``relay``), allowed by address after DNS resolution
(``allowlist``) and with credentials added on the last hop (``config``).

With ``--environment`` the agent is also a self-hosted environment's worker (``worker``,
``held``): it takes sessions from the work queue, runs a local sandbox for each
(``sandboxes``, started as a ``tether sandbox`` child process) and exposes it back through
the tunnel as a loopback-only dynamic route (``routes``), recording its URL on the work item
(``work_contract``).

The gateway imports ``protocol``, ``mux``, ``link``, ``httpwire`` and ``work_contract`` from
here; nothing in this package imports the gateway.
"""
