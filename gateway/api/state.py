"""What route handlers reach through ``request.app.state.gateway``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.config import Settings
from gateway.harness.previews import PreviewHub
from gateway.harness.runner import SessionRunner
from gateway.resources.dreams import DreamRunner
from gateway.store.base import Store
from gateway.tools.sandbox import SandboxPool
from gateway.vault.keyring import KeyRing


@dataclass
class GatewayState:
    settings: Settings
    store: Store
    runner: SessionRunner
    sandboxes: SandboxPool
    keyring: KeyRing
    previews: PreviewHub
    dream_runner: DreamRunner | None = None


def state(request: Request) -> GatewayState:
    gateway: GatewayState = request.app.state.gateway
    return gateway
