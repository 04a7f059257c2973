"""Resource limits and lifetime: time, processes, memory, output; nothing outlives its command."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from mcp import Client

from tests.escape.support import (
    OUTPUT_LIMIT,
    Sandbox,
    bash,
    command_cgroups,
    host_can_start_processes,
    processes_with,
    requires_bwrap,
    still_answers,
    text,
)

pytestmark = requires_bwrap


@pytest.mark.anyio
async def test_the_users_other_tasks_do_not_eat_a_commands_process_limit(client: Client) -> None:
    """Without cgroups the limit is ``RLIMIT_NPROC``, which counts every task of the user: the
    server's threads, this test's, other commands'. Busy threads of the same user (more than the
    sandbox's 64) must not leave a command unable to fork."""
    release = threading.Event()
    busy = [threading.Thread(target=release.wait, daemon=True) for _ in range(100)]
    for thread in busy:
        thread.start()
    try:
        result = await bash(client, "for i in 1 2 3 4 5 6 7 8; do (true) & done; wait; echo forked")
        assert not result.is_error, text(result)
        assert text(result) == "forked\n"
    finally:
        release.set()
        for thread in busy:
            thread.join()


@pytest.mark.anyio
async def test_fork_bomb_is_bounded(client: Client, sandbox: Sandbox) -> None:
    started = time.monotonic()
    classic = await bash(client, ":(){ :|:& };:")
    assert time.monotonic() - started < 10
    assert classic.content  # it ends (its shell returns at once and the namespace takes the rest)

    sustained = await bash(client, ":(){ :|:& };:; sleep 30", timeout_ms=2000)
    assert sustained.is_error
    output = text(sustained)
    # With cgroups the server names the limit; without (an unprivileged server) RLIMIT_NPROC stops forks.
    assert "process limit (64)" in output or "fork: retry: Resource temporarily unavailable" in output
    assert "timed out after 2 s" in output

    assert not command_cgroups(sandbox.server.process.pid)
    assert host_can_start_processes()
    await still_answers(client)


@pytest.mark.anyio
async def test_infinite_loop_times_out(client: Client) -> None:
    started = time.monotonic()
    looping = await bash(client, "while :; do :; done", timeout_ms=1000)
    assert time.monotonic() - started < 5
    assert looping.is_error
    assert "Command timed out after 1 s" in text(looping)
    await still_answers(client)


@pytest.mark.anyio
async def test_memory_is_bounded(client: Client) -> None:
    hog = await bash(client, "python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'")
    # With cgroups the kernel kills it and the server says so; without, RLIMIT_AS refuses the allocation.
    assert (hog.is_error and "out of memory (limit 128 MiB)" in text(hog)) or "MemoryError" in text(hog)
    assert "536870912" not in text(hog)
    await still_answers(client)


@pytest.mark.anyio
async def test_a_gigabyte_of_output_is_capped(client: Client) -> None:
    started = time.monotonic()
    flood = await bash(client, "head -c 1G /dev/zero | tr '\\0' a")
    assert time.monotonic() - started < 10
    assert flood.is_error
    output = text(flood)
    assert "bytes of output omitted ...]" in output
    assert "more than 1 MiB of output and was killed" in output
    assert len(output) < OUTPUT_LIMIT + 300
    await still_answers(client)


@pytest.mark.anyio
async def test_background_processes_do_not_outlive_their_command(client: Client, sandbox: Sandbox) -> None:
    marker = "tether-bg-" + secrets.token_hex(6)
    started = await bash(
        client,
        f"(exec -a {marker} sleep 300) & "
        "(while :; do echo tick >> ticks.log; sleep 0.01; done) & "
        "nohup setsid sleep 300 >/dev/null 2>&1 & "
        "sleep 0.1; echo started",
    )
    assert text(started) == "started\n"
    assert not processes_with(marker)
    assert not command_cgroups(sandbox.server.process.pid)
    size = (sandbox.workspace / "ticks.log").stat().st_size
    assert size > 0
    await bash(client, "sleep 0.3")
    assert (sandbox.workspace / "ticks.log").stat().st_size == size, "the background loop kept writing"
    await still_answers(client)
