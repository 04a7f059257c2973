"""Gates a scripted reply waits at, so a test can act while "the model is thinking".

A turn with ``hold: NAME`` is not answered until the test opens gate NAME; the test first
waits until a request has arrived there. Both are explicit signals over the admin API, so a
test about input arriving mid-call needs no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass
class Gate:
    arrived: anyio.Event = field(default_factory=anyio.Event)
    opened: anyio.Event = field(default_factory=anyio.Event)


class Gates:
    def __init__(self) -> None:
        self._gates: dict[str, Gate] = {}

    def _gate(self, name: str) -> Gate:
        return self._gates.setdefault(name, Gate())

    async def pass_through(self, name: str) -> None:
        """Called by a held request: say it is here, then wait until the gate opens."""
        gate = self._gate(name)
        gate.arrived.set()
        await gate.opened.wait()

    async def wait_arrived(self, name: str, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._gate(name).arrived.wait()
            return True
        return False

    def open(self, name: str) -> None:
        self._gate(name).opened.set()
