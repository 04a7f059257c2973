"""The multiplexer over an in-memory link: streams, half-close, resets, credit, ping deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from tunnel_agent import protocol
from tunnel_agent.link import LinkClosed, MemoryLink, memory_link_pair
from tunnel_agent.mux import HIGH_WATER, Mux, MuxSettings, MuxStream, Role, StreamReset
from tunnel_agent.protocol import ErrorCode

pytestmark = pytest.mark.anyio

FAST = MuxSettings(ping_interval=0.05, ping_timeout=0.2)
SLOW_PINGS = MuxSettings(ping_interval=60, ping_timeout=60)


async def read_all(stream: MuxStream) -> bytes:
    chunks = bytearray()
    while True:
        try:
            chunks += await stream.receive()
        except anyio.EndOfStream:
            return bytes(chunks)


async def echo(stream: MuxStream) -> None:
    """Echo everything back, prefixed by the target, then half-close."""
    await stream.send(stream.target.encode() + b":")
    await stream.send(await read_all(stream))
    await stream.send_eof()


@asynccontextmanager
async def connected(
    accept: Callable[[MuxStream], Awaitable[None]] | None = echo, settings: MuxSettings = SLOW_PINGS
) -> AsyncIterator[tuple[Mux, Mux]]:
    gateway_link, agent_link = memory_link_pair()
    gateway = Mux(gateway_link, Role.GATEWAY, settings=settings, name="gateway")
    agent = Mux(agent_link, Role.AGENT, accept=accept, settings=settings, name="agent")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(gateway.run)
        tasks.start_soon(agent.run)
        yield gateway, agent
        tasks.cancel_scope.cancel()


async def test_a_stream_carries_bytes_both_ways_with_half_close() -> None:
    async with connected() as (gateway, _):
        stream = gateway.open("crm")
        await stream.send(b"hello ")
        await stream.send(b"world")
        await stream.send_eof()
        with anyio.fail_after(5):
            assert await read_all(stream) == b"crm:hello world"


async def test_many_streams_interleave_on_one_link() -> None:
    results: dict[int, bytes] = {}

    async def one(index: int, gateway: Mux) -> None:
        stream = gateway.open(f"t{index}")
        payload = bytes([index]) * (100_000 + index)
        await stream.send(payload)
        await stream.send_eof()
        results[index] = await read_all(stream)

    async with connected() as (gateway, _):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                for index in range(20):
                    tasks.start_soon(one, index, gateway)
    for index in range(20):
        assert results[index] == f"t{index}:".encode() + bytes([index]) * (100_000 + index)


async def test_stream_ids_follow_the_role_parity() -> None:
    async with connected() as (gateway, _):
        assert [gateway.open("a").id, gateway.open("b").id] == [2, 4]


async def test_a_stalled_consumer_blocks_only_its_own_stream() -> None:
    """Stream A's reader never reads; its sender stops at the window while B flows freely."""
    stalled: list[MuxStream] = []
    release = anyio.Event()

    async def accept(stream: MuxStream) -> None:
        if stream.target == "stalled":
            stalled.append(stream)
            await release.wait()
            await read_all(stream)
        else:
            await echo(stream)

    async with connected(accept) as (gateway, _):
        a = gateway.open("stalled")
        sent = 0
        blocked = False
        with anyio.move_on_after(0.5):
            # The window is 256 KiB: the sender must stop well before 4 MiB.
            while sent < 4 * 1024 * 1024:
                await a.send(b"x" * 65536)
                sent += 65536
        blocked = sent < 4 * 1024 * 1024
        assert blocked
        assert sent <= protocol.INITIAL_WINDOW
        assert stalled and stalled[0].buffered <= protocol.INITIAL_WINDOW

        b = gateway.open("free")
        with anyio.fail_after(5):
            await b.send(b"y" * 1_000_000)
            await b.send_eof()
            assert len(await read_all(b)) == len(b"free:") + 1_000_000
        release.set()


async def test_credit_is_regranted_as_the_consumer_reads() -> None:
    async with connected() as (gateway, _):
        stream = gateway.open("big")
        payload = b"z" * (10 * protocol.INITIAL_WINDOW)
        async with anyio.create_task_group() as tasks:
            received = bytearray()

            async def reader() -> None:
                received.extend(await read_all(stream))

            tasks.start_soon(reader)
            with anyio.fail_after(10):
                await stream.send(payload)
                await stream.send_eof()
        assert bytes(received) == b"big:" + payload


async def test_a_reset_reaches_the_peer_with_its_code() -> None:
    async def refuse(stream: MuxStream) -> None:
        stream.reset(ErrorCode.REFUSED, "no route for " + stream.target)

    async with connected(refuse) as (gateway, _):
        stream = gateway.open("nowhere")
        with anyio.fail_after(5), pytest.raises(StreamReset) as caught:
            await stream.receive()
    assert caught.value.code is ErrorCode.REFUSED
    assert caught.value.by_peer
    assert "no route for nowhere" in caught.value.message


async def test_closing_a_stream_early_cancels_the_peer_handler() -> None:
    aborted = anyio.Event()

    async def wait(stream: MuxStream) -> None:
        failure = await stream.wait_aborted()
        assert failure.code is ErrorCode.CANCELLED
        aborted.set()

    async with connected(wait) as (gateway, _):
        stream = gateway.open("slow")
        await stream.aclose()
        with anyio.fail_after(5):
            await aborted.wait()


async def test_a_side_without_a_handler_refuses_streams() -> None:
    async with connected() as (_, agent):
        stream = agent.open("anything")
        with anyio.fail_after(5), pytest.raises(StreamReset) as caught:
            await stream.receive()
    assert caught.value.code is ErrorCode.REFUSED


async def test_a_failing_handler_resets_its_stream_only() -> None:
    async def broken(stream: MuxStream) -> None:
        if stream.target == "broken":
            raise RuntimeError("boom")
        await echo(stream)

    async with connected(broken) as (gateway, _):
        bad = gateway.open("broken")
        with anyio.fail_after(5), pytest.raises(StreamReset) as caught:
            await bad.receive()
        assert caught.value.code is ErrorCode.INTERNAL
        good = gateway.open("fine")
        await good.send_eof()
        with anyio.fail_after(5):
            assert await read_all(good) == b"fine:"


async def test_sending_past_the_granted_window_resets_the_stream() -> None:
    """A peer that ignores credit gets a PROTOCOL reset instead of unbounded buffering."""
    gateway_link, agent_link = memory_link_pair()
    received: list[MuxStream] = []
    got_one = anyio.Event()

    async def hold(stream: MuxStream) -> None:
        received.append(stream)
        got_one.set()
        await stream.wait_aborted()

    agent = Mux(agent_link, Role.AGENT, accept=hold, settings=SLOW_PINGS)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(agent.run)
        await gateway_link.send(protocol.encode(protocol.open_frame(2, "greedy")))
        chunk = protocol.encode(protocol.data_frame(2, b"x" * protocol.MAX_DATA))
        for _ in range(protocol.INITIAL_WINDOW // protocol.MAX_DATA + 1):
            await gateway_link.send(chunk)
        with anyio.fail_after(5):
            while True:
                frame = protocol.decode(await gateway_link.receive())
                if frame.type is protocol.FrameType.ERROR:
                    break
        assert frame.error[0] is ErrorCode.PROTOCOL
        assert received[0].buffered <= protocol.INITIAL_WINDOW
        tasks.cancel_scope.cancel()


async def test_a_malformed_frame_closes_the_link_with_1002() -> None:
    gateway_link, agent_link = memory_link_pair()
    agent = Mux(agent_link, Role.AGENT, accept=echo, settings=SLOW_PINGS)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent.run)
            await gateway_link.send(b"\x63garbage")
    assert agent.close_code == 1002
    assert "unknown frame type" in (agent.close_reason or "")


async def test_ping_deadline_detects_a_silent_peer() -> None:
    """The peer link is never read: no pong comes back, and the link ends within the deadline."""
    local, _silent = memory_link_pair()
    mux = Mux(local, Role.GATEWAY, settings=FAST)
    stream = mux.open("crm")
    with anyio.fail_after(5):
        await mux.run()
    assert mux.close_code == 4408
    assert "no pong" in (mux.close_reason or "")
    with pytest.raises(StreamReset) as caught:
        await stream.receive()
    assert caught.value.code is ErrorCode.LINK_LOST


async def test_pings_keep_a_healthy_idle_link_open() -> None:
    async with connected(settings=FAST) as (gateway, agent):
        # The passage of time is what is under test: twenty ping rounds on an idle link.
        await anyio.sleep(20 * FAST.ping_interval)
        assert not gateway.closed and not agent.closed
        assert gateway.counters.pongs_received >= 5
        assert gateway.counters.last_rtt is not None


async def test_losing_the_link_fails_every_open_stream() -> None:
    gateway_link, agent_link = memory_link_pair()
    gateway = Mux(gateway_link, Role.GATEWAY, settings=SLOW_PINGS)
    started = anyio.Event()

    async def hang(stream: MuxStream) -> None:
        started.set()
        await anyio.sleep_forever()

    agent = Mux(agent_link, Role.AGENT, accept=hang, settings=SLOW_PINGS)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(gateway.run)
        tasks.start_soon(agent.run)
        streams = [gateway.open(f"s{i}") for i in range(3)]
        with anyio.fail_after(5):
            await started.wait()
            await agent_link.close(1001, "agent shutting down")
            for stream in streams:
                with pytest.raises(StreamReset) as caught:
                    await stream.receive()
                assert caught.value.code is ErrorCode.LINK_LOST
        assert gateway.closed
        with pytest.raises(LinkClosed):
            gateway.open("late")
        tasks.cancel_scope.cancel()


async def test_aclose_sends_the_close_code_to_the_peer() -> None:
    async with connected() as (gateway, agent):
        with anyio.fail_after(5):
            await gateway.aclose(4401, "token rotated")
            await agent.wait_closed()
    assert agent.close_code == 4401
    assert agent.close_reason == "token rotated"


async def test_on_close_runs_once_when_the_link_ends() -> None:
    ended: list[str | None] = []
    link: MemoryLink
    link, other = memory_link_pair()
    mux = Mux(link, Role.GATEWAY, settings=SLOW_PINGS, on_close=lambda m: ended.append(m.close_reason))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(mux.run)
            await other.close(1000, "bye")
    assert ended == ["bye"]


async def test_senders_wait_for_a_slow_link_to_drain() -> None:
    """With the link itself blocked, queued data stops at the high-water mark, even for
    streams whose credit would allow far more."""
    gateway_link, _unread = memory_link_pair(buffer=0)  # nobody reads: every send blocks
    gateway = Mux(gateway_link, Role.GATEWAY, settings=MuxSettings(ping_interval=60, window=2**30))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(gateway.run)
        streams = [gateway.open(f"s{i}") for i in range(4)]
        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as senders:
                for stream in streams:
                    senders.start_soon(stream.send, b"x" * (4 * HIGH_WATER))
        assert gateway._queued_bytes <= HIGH_WATER + protocol.MAX_DATA
        tasks.cancel_scope.cancel()
