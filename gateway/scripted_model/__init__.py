"""A stand-in for Claude: an HTTP server speaking the Anthropic Messages API from scripts.

Nothing in tests or demos can reach the real API, so the harness talks to this
server through the real ``anthropic`` SDK instead. Scripts (see ``script.py``) say
what each assistant turn contains, which requests fail first, and how the first streams
break (a hang, an early end, broken tool-input JSON, a dropped connection; ``stream.py``).
Run it with ``tether model --port 0 --script FILE``.
"""

from __future__ import annotations

from gateway.scripted_model.script import Failure, Reply, Script, ScriptBook, Turn
from gateway.scripted_model.server import create_app, run

__all__ = ["Failure", "Reply", "Script", "ScriptBook", "Turn", "create_app", "run"]
