"""The sandbox template's edges, from an adversarial review: a refused fork, a slow or dying
template, pidfds the gateway holds, a ForkedProcess used after close, titles, tokens that must
stay in their own sandbox, and a killed gateway leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import gateway.tools.zygote as zygote_module
from gateway.tools.pidfiles import PidFiles, process_start
from gateway.tools.sandbox import SandboxPool
from gateway.tools.zygote import ForkedProcess, Zygote
from sandbox_server import launch, workspace_fs
from tests.support.sandbox_pools import bash_in, cmdline, parent
from tests.support.self_hosted import eventually

ARGS = ["--egress", "none", "--timeout", "20"]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _fds(pid: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return out


def _kind(target: str) -> str:
    return target.split(":", 1)[0] if ":" in target else "path:" + target


def _templates_of(starter: int) -> list[int]:
    """Live template processes whose parent is ``starter``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        with contextlib.suppress(OSError, ValueError, IndexError):
            if parent(pid) == starter and process_start(pid) is not None:
                if any(arg.startswith("--zygote") for arg in cmdline(pid)):
                    found.append(pid)
    return found


# --- Lifecycle -----------------------------------------------------------------------------------


async def test_pidfds_the_gateway_holds_are_close_on_exec() -> None:
    """Each sandbox's pidfd can signal it: nothing the gateway runs may inherit one."""
    template = Zygote()
    child: ForkedProcess | None = None
    try:
        with anyio.fail_after(60):
            child = await template.fork()
        assert not os.get_inheritable(child._pidfd), "a sandbox's pidfd must be close-on-exec"
    finally:
        if child is not None:
            await child.aclose()
        await template.close()


@contextlib.contextmanager
def _pids_cgroup(limit: int) -> Iterator[Path]:
    """A cgroup v1 ``pids`` group with ``pids.max``; whatever is left in it is moved back out."""
    root = Path("/sys/fs/cgroup/pids")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 pids hierarchy to limit the template's forks with")
    group = root / f"tether-zygote-review-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "pids.max").write_text(str(limit))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        group.rmdir()


async def test_a_fork_the_kernel_refuses_fails_alone(tmp_path: Path) -> None:
    """A fork the kernel refuses (the service's pids budget, which a hostile session's commands
    count towards) fails that one warm start: the template and the sandboxes it forked live on."""
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, zygote=True)
    pool.warm_up()
    try:
        with anyio.fail_after(60):
            await pool.warm.wait_for(1)
        assert await bash_in(pool, "sesn_1", "echo one") == "one\n"
        serving = pool.pid("sesn_1")
        with anyio.fail_after(60):
            [waiting] = await pool.warm.wait_for(1)
        template = parent(waiting)
        taken = None
        with _pids_cgroup(limit=1) as group:
            (group / "cgroup.procs").write_text(str(template))  # its next fork gets EAGAIN
            try:
                taken = await pool.warm.take()  # the warm one is ours now; a refill is forked
                assert taken is not None and taken.process.pid == waiting
                with anyio.fail_after(30):
                    for task in list(pool.warm._filling):
                        await task
                assert process_start(template) is not None, "the template survives a refused fork"
                assert await bash_in(pool, "sesn_1", "echo still") == "still\n"
                assert pool.pid("sesn_1") == serving, (
                    "one refused fork must not kill the sandboxes already forked"
                )
            finally:
                if taken is not None:
                    await launch.stop(taken.process, grace=0)
    finally:
        await pool.destroy("sesn_1")
        await pool.close()


def _stop_first_template(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """SIGSTOP the first template right after it is spawned: a template slower than the fork
    deadline, as one still importing on a loaded host is. The pids stopped."""
    original = anyio.open_process
    stopped: list[int] = []

    async def open_process(command: Any, **kwargs: Any) -> Any:
        process = await original(command, **kwargs)
        if not stopped and any(str(arg).startswith("--zygote") for arg in command):
            os.kill(process.pid, signal.SIGSTOP)
            stopped.append(process.pid)
        return process

    monkeypatch.setattr(anyio, "open_process", open_process)
    return stopped


async def test_a_slow_template_is_retired_and_closed_with_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template slower than the fork deadline (here stopped) is retired, not killed, and not
    restarted behind the pool's back by a fork already queued: after the pool closes, no
    template and no pid file is left."""
    monkeypatch.setattr(zygote_module, "FORK_DEADLINE", 3.0)
    stopped = _stop_first_template(monkeypatch)
    state = tmp_path / "state"
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=2, state_dir=state, zygote=True)
    pool.warm_up()
    left: list[int] = []
    try:
        with anyio.fail_after(60):
            await pool.warm.wait_for(2)
        assert stopped, "the first template was stopped"
    finally:
        await pool.close()
        left = _templates_of(os.getpid())
        for pid in left:  # ours: started by this test's pool
            os.kill(pid, signal.SIGKILL)
    files = sorted(p.name for p in state.iterdir()) if state.exists() else []
    assert left == [] and files == [], f"after close: templates {left}, pid files {files}"


async def test_a_fork_timeout_leaves_the_session_sandboxes_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork the template does not answer in time retires it; the sandboxes it already forked,
    serving sessions, serve on."""
    monkeypatch.setattr(zygote_module, "FORK_DEADLINE", 3.0)
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, zygote=True)
    pool.warm_up()
    template = None
    try:
        with anyio.fail_after(60):
            await pool.warm.wait_for(1)
        assert await bash_in(pool, "sesn_1", "echo one") == "one\n"
        serving = pool.pid("sesn_1")
        with anyio.fail_after(60):
            [waiting] = await pool.warm.wait_for(1)
        template = parent(waiting)
        os.kill(template, signal.SIGSTOP)
        assert await bash_in(pool, "sesn_2", "echo two") == "two\n"  # takes the warm one, refills
        with anyio.fail_after(30):
            for task in list(pool.warm._filling):
                await task
        assert await bash_in(pool, "sesn_1", "echo still") == "still\n"
        assert pool.pid("sesn_1") == serving, "a slow fork must not kill the sessions' sandboxes"
    finally:
        if template is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(template, signal.SIGCONT)
        for session in ("sesn_1", "sesn_2"):
            await pool.destroy(session)
        await pool.close()


async def test_a_forked_process_can_be_waited_for_and_closed_after_close() -> None:
    """Like anyio's own ``Process``: ``wait`` and ``aclose`` after ``aclose`` answer at once
    and never touch a descriptor number reused since (here by a pipe)."""
    template = Zygote()
    child: ForkedProcess | None = None
    try:
        with anyio.fail_after(60):
            child = await template.fork()
        reported = anyio.Event()
        original = child.exited

        def exited(code: int) -> None:
            original(code)
            reported.set()

        child.exited = exited  # type: ignore[method-assign]
        child.kill()
        with anyio.fail_after(20):
            await reported.wait()
        await child.aclose()
        r, w = os.pipe()  # may take the freed number
        try:
            with anyio.fail_after(5):
                assert await child.wait() == -signal.SIGKILL
            await child.aclose()
            os.fstat(r)  # still ours: a second aclose must not close it
            os.fstat(w)
        finally:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)
    finally:
        await template.close()


async def test_a_waiting_child_is_titled_as_a_warm_sandbox() -> None:
    """``ps`` tells the template (``--zygote``) from its waiting children (``--warm``)."""
    template = Zygote()
    child: ForkedProcess | None = None
    try:
        with anyio.fail_after(60):
            child = await template.fork()
            assert child.stdout is not None
            assert (await child.stdout.receive()).strip() == b"warm"  # retitled before it says so
        assert template._process is not None
        assert any(a.startswith("--zygote") for a in cmdline(template._process.pid))
        assert not any(a.startswith("--zygote") for a in cmdline(child.pid))
    finally:
        if child is not None:
            await child.aclose()
        await template.close()


# --- Isolation and process semantics --------------------------------------------------------------------


def _memory_contains(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in ``pid``'s readable memory (root reads /proc/PID/mem)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addresses, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in addresses.split("-"))
            if end - start > 1 << 30:
                continue
            with contextlib.suppress(OSError, ValueError, OverflowError):
                mem.seek(start)
                if needle in mem.read(end - start):
                    found = True
                    break
    return found


async def test_no_token_reaches_the_template_or_a_sibling(tmp_path: Path) -> None:
    """Tokens arrive after the fork, on the child's own stdin: neither the template nor the other
    forked sandbox ever holds them in memory."""
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=2, zygote=True)
    pool.warm_up()
    try:
        with anyio.fail_after(60):
            await pool.warm.wait_for(2)
        tokens = {}
        for session in ("sesn_a", "sesn_b"):
            assert await bash_in(pool, session, "echo ok") == "ok\n"
            endpoint = await pool.endpoint(session)
            tokens[session] = dict(endpoint.headers)["Authorization"].split()[1].encode()
        a, b = pool.pid("sesn_a"), pool.pid("sesn_b")
        assert a is not None and b is not None
        template = parent(a)
        assert parent(b) == template != os.getpid()
        assert _memory_contains(a, tokens["sesn_a"]), "the probe finds a token where it is"
        assert not _memory_contains(b, tokens["sesn_a"]) and not _memory_contains(a, tokens["sesn_b"])
        assert not _memory_contains(template, tokens["sesn_a"])
        assert not _memory_contains(template, tokens["sesn_b"])
    finally:
        for session in ("sesn_a", "sesn_b"):
            await pool.destroy(session)
        await pool.close()


def _signal_masks(pid: int) -> dict[str, str]:
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    return {
        name: fields[name].strip()
        for name in ("SigBlk", "SigIgn", "SigCgt", "NoNewPrivs", "Seccomp", "Threads")
    }


async def test_a_forked_session_sandbox_holds_what_a_spawned_one_does(tmp_path: Path) -> None:
    """Serving, a forked sandbox has the same kinds of fds as a spawned one (stdout a socket
    instead of a pipe), no pidfd or template socket, the same signal dispositions and no extra
    threads; the command it runs sees the same fds."""
    views = {}
    for mode in (True, False):
        pool = SandboxPool(tmp_path / f"ws{mode}", ARGS, warm_pool=1, zygote=mode)
        pool.warm_up()
        try:
            with anyio.fail_after(60):
                [warm] = await pool.warm.wait_for(1)
            inside = await bash_in(pool, "sesn_x", "ls /proc/self/fd | sort -n | tr '\\n' ' '")
            pid = pool.pid("sesn_x")
            assert pid == warm
            fds = _fds(pid)
            assert fds[1].startswith("socket:" if mode else "pipe:")
            fds.pop(1)
            assert not any("pidfd" in target for target in fds.values())
            # (pytest's capture file on 2, the workspace, and the HTTP client's connections that
            # may linger after the call are left out: they differ by timing, not by mode)
            kinds = sorted(
                (fd, t if t.startswith("anon_inode") else _kind(t))
                for fd, t in fds.items()
                if "tmp" not in t and not (t.startswith("socket:") and fd > 7)
            )
            views[mode] = (kinds, _signal_masks(pid), inside)
        finally:
            await pool.destroy("sesn_x")
            await pool.close()
    assert views[True] == views[False]


_STARTER = """
import anyio, sys
from pathlib import Path
from gateway.tools.sandbox import SandboxPool

async def main() -> None:
    pool = SandboxPool(Path(sys.argv[1]), ["--egress", "none"], warm_pool=2, zygote=True,
                       state_dir=Path(sys.argv[2]))
    pool.warm_up()
    pids = await pool.warm.wait_for(2)
    await pool.endpoint("sesn_k")
    print(*pids, flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""


def test_a_killed_gateway_leaves_no_template_child_or_pid_file_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    starter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_STARTER), str(tmp_path / "ws"), str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        warm = [int(pid) for pid in starter.stdout.readline().split()]
        assert len(warm) == 2
        template = parent(warm[1])
        recorded = sorted(p.name.split(".")[0] for p in state.iterdir())
        assert "zygote" in recorded and "sesn_k" in recorded and "warm" in recorded
        pids = [template, *warm, *(int(p.name.split(".")[1]) for p in state.iterdir())]
    finally:
        starter.kill()
        starter.wait()
    eventually(
        lambda: all(process_start(pid) is None for pid in pids), "the template and its children to die"
    )
    assert PidFiles(state).stop_leftovers(grace=1) == []
    assert list(state.iterdir()) == [], "stale pid files are cleared"
    workspace_fs.remove(tmp_path / "ws" / "sesn_k")  # what a restarted gateway does for the session


async def test_terminate_then_concurrent_waits_and_kill_after_exit(tmp_path: Path) -> None:
    """The template reaps only in its own loop, after it has answered ``forked`` with a pidfd
    opened on the (at worst zombie) child, so the answer always comes first; ``kill`` after the
    exit is a ``ProcessLookupError``; concurrent ``wait()``s all get the code."""
    template = Zygote()
    child: ForkedProcess | None = None
    try:
        with anyio.fail_after(60):
            child = await template.fork()
        child.terminate()
        codes: list[int] = []

        async def wait() -> None:
            codes.append(await child.wait())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(wait)
        assert codes == [-signal.SIGTERM] * 3
        assert child.returncode == -signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            child.kill()
        r, _, _ = select.select([child._pidfd], [], [], 0)
        assert r, "the pidfd says it exited"
    finally:
        if child is not None:
            await child.aclose()
        await template.close()


def test_only_the_reseeded_random_exists_in_the_template() -> None:
    """No ``random.Random`` instance other than the module's (reseeded in every forked child by
    ``os.register_at_fork``) exists after the template's imports, and no thread runs at fork."""
    probe = textwrap.dedent(
        """
        import gc, random, threading
        from sandbox_server import warm
        warm.preload()
        gc.collect()
        others = [o for o in gc.get_objects()
                  if isinstance(o, random.Random) and o is not random._inst
                  and not isinstance(o, random.SystemRandom)]
        print(len(others), threading.active_count())
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]
