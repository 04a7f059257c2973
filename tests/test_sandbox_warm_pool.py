"""The warm pool: sandbox processes started ahead of need, bound to a session at hand-over.

A handed-over process must be exactly what a cold start would have been: the session's
workspace and flags (also in its command line, where operators and tests look), its own token,
the same isolation (the probes below compare a warm sandbox with a cold one); and no warm
process may outlive the pool or the process that started it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import httpx2
import pytest

from gateway.tools.pidfiles import process_start
from gateway.tools.sandbox import SandboxPool
from gateway.tools.warm_pool import WARM_POOL_ENV, warm_pool_size
from sandbox_server import launch
from sandbox_server.warm import ROOM, hand_over_line
from tests.support.sandbox_pools import bash_in, cmdline
from tests.support.self_hosted import eventually

ARGS = ["--egress", "none", "--timeout", "20"]
PROBE = "; ".join(
    [
        "id",
        "pwd",
        "hostname",
        "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status",
        "cat /proc/self/uid_map /proc/self/gid_map",
        "ls -a /",
        "cat /proc/1/comm",
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1",
        "ulimit -a",
        "env | sort",
        "awk '{print $2, $3, $4}' /proc/self/mounts | sort",
        "touch /etc/x 2>&1 || true",
        "cat /proc/self/cgroup",
    ]
)
"""What a command can see of its confinement: identity, capabilities, namespaces' contents,
network devices, limits, environment, mounts, cgroup (per-run names are normalised below)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=[False, True], ids=["spawned", "forked"])
def zygote(request: pytest.FixtureRequest) -> bool:
    """Warm processes started on their own, or forked from the template (``gateway.tools.zygote``)."""
    return bool(request.param)


def _pid_files(state: Path) -> list[str]:
    """The state dir's pid files, but the template's (its own, whatever the sessions)."""
    return sorted(p.name for p in state.iterdir() if not p.name.startswith("zygote."))


async def _warm_pids(pool: SandboxPool, count: int = 1) -> list[int]:
    """The pool's warm processes once ``count`` are waiting (with a deadline)."""
    with anyio.fail_after(60):
        return await pool.warm.wait_for(count)


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


@pytest.mark.anyio
async def test_a_session_gets_a_warm_process_bound_to_its_workspace(tmp_path: Path, zygote: bool) -> None:
    state = tmp_path / "state"
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, state_dir=state, zygote=zygote)
    pool.warm_up()
    try:
        [warm] = await _warm_pids(pool)
        assert _pid_files(state) == [f"warm.{warm}.json"]
        assert "--workspace" not in cmdline(warm), "a warm process is bound to no workspace yet"

        assert await bash_in(pool, "sesn_warm", "echo hi > made.txt; pwd") == "/workspace\n"
        assert pool.pid("sesn_warm") == warm, "the session got the warm process"
        assert (tmp_path / "ws" / "sesn_warm" / "made.txt").read_text() == "hi\n"
        shown = cmdline(warm)
        assert shown[shown.index("--workspace") + 1] == str(pool.workspace("sesn_warm"))
        assert "sandbox" in shown and not any(arg.startswith("--warm") for arg in shown)

        [refill] = await _warm_pids(pool)
        assert refill != warm, "a replacement is started in the background"
        assert _pid_files(state) == sorted([f"sesn_warm.{warm}.json", f"warm.{refill}.json"])
    finally:
        await pool.destroy("sesn_warm")
        await pool.close()
    assert list(state.iterdir()) == [], "no pid file is left"
    assert process_start(warm) is None and process_start(refill) is None, "close stops every process"


@pytest.mark.anyio
async def test_a_handed_over_sandbox_answers_only_its_own_token(tmp_path: Path, zygote: bool) -> None:
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, zygote=zygote)
    pool.warm_up()
    try:
        [warm] = await _warm_pids(pool)
        endpoint = await pool.endpoint("sesn_token")
        assert pool.pid("sesn_token") == warm
        token = dict(endpoint.headers)["Authorization"].split()[1]
        raw = _proc(warm, "cmdline") + _proc(warm, "environ")
        assert token.encode() not in raw, "the token travelled on stdin, not in argv or the environment"
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        async with httpx2.AsyncClient(timeout=30) as http:
            refused = await http.post(endpoint.url, json=body, headers=headers)
            wrong = await http.post(endpoint.url, json=body, headers={**headers, "authorization": "Bearer x"})
        assert refused.status_code == 401 and wrong.status_code == 401
        assert await bash_in(pool, "sesn_token", "echo ok") == "ok\n"
    finally:
        await pool.destroy("sesn_token")
        await pool.close()


def _normalised(text: str, session_id: str) -> str:
    """Without what differs by design: the session id, and the host uid each workspace maps to
    (``sandbox_server.identity``: one per workspace, in the default range when run as root)."""
    return re.sub(r"\b1\d{6}\b", "HOST_ID", text.replace(session_id, "SESSION"))


@pytest.mark.anyio
async def test_a_warm_sandbox_is_confined_exactly_like_a_cold_one(tmp_path: Path, zygote: bool) -> None:
    warm_pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, zygote=zygote)
    cold_pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=0)
    warm_pool.warm_up()
    try:
        [warm] = await _warm_pids(warm_pool)
        warm_view = await bash_in(warm_pool, "sesn_w", PROBE)
        assert warm_pool.pid("sesn_w") == warm
        cold_view = await bash_in(cold_pool, "sesn_c", PROBE)
        assert "CapEff" in warm_view and "/workspace" in warm_view
        assert _normalised(warm_view, "sesn_w") == _normalised(cold_view, "sesn_c")
    finally:
        await warm_pool.destroy("sesn_w")
        await cold_pool.destroy("sesn_c")
        await warm_pool.close()
        await cold_pool.close()


@pytest.mark.anyio
async def test_a_warm_process_that_died_is_skipped_and_the_start_is_cold(
    tmp_path: Path, zygote: bool
) -> None:
    pool = SandboxPool(tmp_path / "ws", ARGS, warm_pool=1, state_dir=tmp_path / "state", zygote=zygote)
    pool.warm_up()
    try:
        [warm] = await _warm_pids(pool)
        os.kill(warm, signal.SIGKILL)
        eventually(lambda: process_start(warm) is None, "the warm process to die")
        assert await bash_in(pool, "sesn_cold", "echo cold") == "cold\n"
        started = pool.pid("sesn_cold")
        assert started is not None and started != warm
        assert "--workspace" in cmdline(started)
        assert not (tmp_path / "state" / f"warm.{warm}.json").exists()
    finally:
        await pool.destroy("sesn_cold")
        await pool.close()


_STARTER = """
import anyio, sys
from pathlib import Path
from gateway.tools.sandbox import SandboxPool

async def main() -> None:
    pool = SandboxPool(Path(sys.argv[1]), warm_pool=2, zygote=sys.argv[2] == "forked")
    pool.warm_up()
    print(*await pool.warm.wait_for(2), flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""


def test_warm_processes_die_with_the_process_that_started_them(tmp_path: Path, zygote: bool) -> None:
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_STARTER),
            str(tmp_path / "ws"),
            "forked" if zygote else "spawned",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        pids = [int(pid) for pid in starter.stdout.readline().split()]
        assert len(pids) == 2 and all(process_start(pid) is not None for pid in pids)
    finally:
        starter.kill()
        starter.wait()
    eventually(lambda: all(process_start(pid) is None for pid in pids), "the warm processes to die")


def test_a_warm_process_refuses_a_hand_over_with_more_than_tokens(tmp_path: Path) -> None:
    process = subprocess.Popen(
        launch.warm_command(ROOM),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=launch.environment(None),
    )
    line = b'{"args": ["--workspace", "%s"], "env": {"LD_PRELOAD": "/x.so"}}\n' % str(tmp_path).encode()
    _, err = process.communicate(line, timeout=120)
    assert process.returncode != 0 and b"tokens" in err
    assert list(tmp_path.iterdir()) == [], "nothing was opened"
    with pytest.raises(ValueError):
        hand_over_line(["--workspace", "w"], {"LD_PRELOAD": "/x.so"})


def test_a_warm_process_never_needed_exits_quietly() -> None:
    process = subprocess.Popen(
        launch.warm_command(ROOM),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=launch.environment(None),
    )
    out, err = process.communicate(b"", timeout=120)
    assert (process.returncode, out, err) == (0, b"warm\n", b"")


def test_the_pool_size_setting() -> None:
    assert warm_pool_size({}) == 1
    assert warm_pool_size({WARM_POOL_ENV: " 0 "}) == 0
    assert warm_pool_size({WARM_POOL_ENV: "3"}) == 3
    for bad in ("-1", "two"):
        with pytest.raises(ValueError, match=WARM_POOL_ENV):
            warm_pool_size({WARM_POOL_ENV: bad})
