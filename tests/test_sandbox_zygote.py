"""The sandbox template: warm sandboxes forked from one imported process, sharing its memory.

The warm pool's own tests (``test_sandbox_warm_pool.py``) run with and without the template:
a forked sandbox is held to everything a spawned one is (its workspace, its token, the same
confinement, dying with its starter). These tests cover what is the template's own: one
parent, shared pages, nothing of the template's or of another child's left open in a child,
and a template that dies taking its children along and being started anew.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from gateway.settings import SANDBOX_ZYGOTE
from gateway.tools.pidfiles import process_start
from gateway.tools.sandbox import SandboxPool
from tests.support.sandbox_pools import bash_in, cmdline, parent
from tests.support.self_hosted import eventually

ARGS = ["--egress", "none", "--timeout", "20"]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _memory(pid: int) -> tuple[float, float]:
    """Resident and private (not shared with any other process) memory, in MB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"] / 1024, (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


async def test_warm_sandboxes_are_forked_from_one_template_and_share_its_memory(tmp_path: Path) -> None:
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=3, zygote=True)
    pool.warm_up()
    try:
        with anyio.fail_after(60):
            warm = await pool.warm.wait_for(3)
        template = {parent(pid) for pid in warm}
        assert len(template) == 1 and template != {os.getpid()}, "all three come from one template"
        [zygote] = template
        assert any(arg.startswith("--zygote") for arg in cmdline(zygote))
        for pid in warm:
            assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"], (
                "a child keeps nothing of the template's (its socket, its signal pipe) or of another child's"
            )
            resident, private = _memory(pid)
            assert private < resident / 2, (
                f"a forked sandbox shares its imports: {private:.0f} of {resident:.0f} MB"
            )
        assert await bash_in(pool, "sesn_1", "echo forked") == "forked\n"
        resident, private = _memory(warm[0])
        assert private < resident / 2, f"serving, it still shares: {private:.0f} of {resident:.0f} MB"
    finally:
        await pool.destroy("sesn_1")
        await pool.close()
    assert process_start(zygote) is None, "close stops the template"


async def test_a_template_that_dies_takes_its_children_and_is_started_anew(tmp_path: Path) -> None:
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, zygote=True)
    pool.warm_up()
    try:
        with anyio.fail_after(60):
            [first] = await pool.warm.wait_for(1)
        assert await bash_in(pool, "sesn_1", "echo first") == "first\n"
        serving = pool.pid("sesn_1")
        assert serving == first, "the session got a forked sandbox"
        with anyio.fail_after(60):
            [waiting] = await pool.warm.wait_for(1)
        zygote = parent(waiting)
        os.kill(zygote, signal.SIGKILL)
        eventually(
            lambda: all(process_start(pid) is None for pid in (zygote, serving, waiting)),
            "the template's children to die with it",
        )
        assert await bash_in(pool, "sesn_2", "echo again") == "again\n"
        with anyio.fail_after(60):
            [refill] = await pool.warm.wait_for(1)
        assert parent(refill) not in (zygote, os.getpid()), "a new template forks the new warm sandboxes"
    finally:
        await pool.destroy("sesn_1")
        await pool.destroy("sesn_2")
        await pool.close()


def test_the_template_setting() -> None:
    assert SANDBOX_ZYGOTE.read({}) is True
    assert SANDBOX_ZYGOTE.read({SANDBOX_ZYGOTE.name: "0"}) is False
