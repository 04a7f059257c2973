"""The on-prem tunnel agent, and the tunnel protocol both ends share.

The agent dials out to the gateway over WebSockets (``connector``), carries many streams
per connection (``mux`` over ``protocol`` frames), and serves each stream as one HTTP
request to an on-prem target (``relay``), allowed by address after DNS resolution
(``allowlist``) and with credentials added on the last hop (``config``). The gateway
imports ``protocol``, ``mux``, ``link`` and ``httpwire`` from here; nothing in this
package imports the gateway.
"""
