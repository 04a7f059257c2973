"""The gateway's end of tunnels: agents dial in over WebSockets, MCP traffic rides out.

``hub`` tracks connected agents and authenticates them; ``transport`` carries an HTTP
request through a tunnel stream; ``addressing`` maps a host name to a tunnel; ``tokens``
mints and seals connector tokens; ``wiring`` is what the app plugs in.
"""
