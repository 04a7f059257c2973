"""``GET /v1/tether/egress/credentials``: the egress proxy's substitution table.

Authenticated by a session-scoped JWT (not an API key): the proxy holds only that.
The response carries secret values, so it is never logged and is sent nowhere else.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import AuthenticationFailed
from gateway.resources import sessions
from gateway.vault.egress import TokenRefused, proxy_credentials, verify_token

PATH = "/v1/tether/egress/credentials"


async def credentials(request: Request) -> JSONResponse:
    gateway = state(request)
    authorization = request.headers.get("authorization", "")
    if not authorization.lower().startswith("bearer "):
        raise AuthenticationFailed("an egress token is required")
    try:
        session_id = verify_token(
            gateway.keyring, authorization[7:].strip(), request.query_params.get("session_id")
        )
    except TokenRefused as exc:
        raise AuthenticationFailed(str(exc)) from None
    session = await sessions.get(gateway.store, session_id)
    table = await proxy_credentials(gateway.store, gateway.keyring, session)
    return JSONResponse({"credentials": table}, headers={"cache-control": "no-store"})


routes = [endpoint(PATH, get=credentials)]
