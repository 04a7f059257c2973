"""What the test run needs from the system, and installing it through apt when it is missing.

The README's test command must pass on a machine that has nothing but Python, so the run
provisions itself instead of a CI script doing it beforehand: bubblewrap (the sandbox's
``bash``) and curl (which tests run inside the sandbox, whose ``/usr`` is the host's),
Debian's Chromium and the ``libatomic1`` that Playwright's Node.js driver links
(the trail page's browser test; Playwright's own browser download is never used) and
PostgreSQL's server binaries (the throwaway cluster of
``pg_cluster``), and npm with Node.js (the TypeScript SDK's client test, ``ts_client``). Each is looked for, and only what the selected tests need is asked for
(``needed_by``); whatever is missing is installed with one ``apt-get install`` as root, or
through passwordless ``sudo``. When that is impossible (no apt, not root, no sudo), the run
stops with one message naming what to install: a test never skips for want of a package.

Every decision goes through ``Host``, whose probes a unit test replaces (a fake ``which``).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

CHROMIUM_ENV = "TETHER_TEST_CHROMIUM"
"""A Chromium binary to use instead of Debian's ``/usr/bin/chromium`` (``test_ui_trail``)."""
PG_DSN_ENV = "TETHER_TEST_PG_DSN"
"""A PostgreSQL server to use instead of a throwaway cluster (its user may create databases)."""
APT_TIMEOUT = 1800.0


def _run_quietly(command: Sequence[str]) -> bool:
    try:
        return subprocess.run(list(command), capture_output=True, timeout=30, check=False).returncode == 0
    except OSError:
        return False


def _playwright_driver_runs() -> bool:
    """Whether Playwright's bundled Node.js starts (it links ``libatomic.so.1``, which a minimal
    Debian lacks and the ``chromium`` package does not bring)."""
    from playwright._impl._driver import compute_driver_executable

    try:
        node, _ = compute_driver_executable()
    except Exception:
        return False
    return _run_quietly([node, "--version"])


@dataclass(frozen=True)
class Host:
    """The probes every decision reads; tests pass fakes."""

    which: Callable[[str], str | None] = shutil.which
    executable: Callable[[str], bool] = lambda path: os.access(path, os.X_OK) and os.path.isfile(path)
    glob: Callable[[str], list[str]] = glob.glob
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    euid: int = field(default_factory=os.geteuid)
    passwordless_sudo: Callable[[], bool] = lambda: _run_quietly(["sudo", "-n", "true"])
    playwright_driver_runs: Callable[[], bool] = _playwright_driver_runs


@dataclass(frozen=True)
class Requirement:
    package: str
    """The Debian/Ubuntu package that provides it."""
    missing: str
    """What is looked for, as the failure message names it."""
    present: Callable[[Host], bool]


def _has_bwrap(host: Host) -> bool:
    # As ``sandbox_server.bwrap_args.find_bwrap`` looks for it.
    return host.which("bwrap") is not None or host.executable("/usr/bin/bwrap")


def _has_chromium(host: Host) -> bool:
    return host.executable(host.env.get(CHROMIUM_ENV) or "/usr/bin/chromium")


def _has_postgres(host: Host) -> bool:
    # A configured server needs no binaries here; a throwaway cluster needs initdb and pg_ctl.
    return bool(host.env.get(PG_DSN_ENV)) or any(
        host.executable(path) for path in host.glob("/usr/lib/postgresql/*/bin/initdb")
    )


BUBBLEWRAP = Requirement("bubblewrap", "bwrap", _has_bwrap)
CURL = Requirement("curl", "curl", lambda host: host.which("curl") is not None)
SANDBOX = (BUBBLEWRAP, CURL)
"""Every run's: the sandbox, and the host programs tests run inside it (its ``/usr`` is the host's)."""
CHROMIUM = Requirement("chromium", "/usr/bin/chromium", _has_chromium)
PLAYWRIGHT_DRIVER = Requirement(
    "libatomic1", "libatomic.so.1 for Playwright's Node.js driver", lambda host: host.playwright_driver_runs()
)
POSTGRESQL = Requirement("postgresql", "PostgreSQL's initdb (/usr/lib/postgresql/*/bin)", _has_postgres)
DOCKER_ENGINE = Requirement(
    "docker.io",
    "dockerd",
    lambda host: host.which("dockerd") is not None or host.executable("/usr/sbin/dockerd"),
)
"""The image tests' private engine (``docker_engine``); its client comes in the same package."""
DEBOOTSTRAP = Requirement(
    "debootstrap",
    "debootstrap",
    lambda host: host.which("debootstrap") is not None or host.executable("/usr/sbin/debootstrap"),
)
"""Makes the image tests' base image from Debian's mirror (no container registry is reachable)."""
NODE = Requirement(
    "npm",
    "node and npm",
    lambda host: host.which("node") is not None and host.which("npm") is not None,
)
"""The TypeScript SDK's client test (``ts_client``); Debian's npm brings Node.js with it."""

USED_BY: dict[Requirement, tuple[str, ...]] = {
    CHROMIUM: ("playwright",),
    PLAYWRIGHT_DRIVER: ("playwright",),
    POSTGRESQL: ("tests.support.postgres", "tests.support.pg_cluster", "tests.support.restarts"),
    DOCKER_ENGINE: ("tests.support.docker_engine",),
    DEBOOTSTRAP: ("tests.support.docker_engine",),
    NODE: ("tests.support.ts_client",),
}
"""A test module that uses any of these modules needs the requirement."""


def needed_by(modules: Iterable[ModuleType]) -> list[Requirement]:
    """The requirements (besides ``SANDBOX``, which every run needs) of these test modules: those
    whose globals come from a module listed in ``USED_BY``."""
    sources: set[str] = set()
    for module in modules:
        for value in vars(module).values():
            name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str):
                sources.add(name)
    return [
        requirement
        for requirement, users in USED_BY.items()
        if any(source == user or source.startswith(user + ".") for source in sources for user in users)
    ]


@dataclass(frozen=True)
class Plan:
    """What to do about the requirements: nothing, run ``commands``, or stop with ``failure``."""

    missing: tuple[Requirement, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    failure: str | None = None


def plan(requirements: Sequence[Requirement], host: Host, *, updated: bool = False) -> Plan:
    """Decide how to get the missing ``requirements`` (``updated``: apt's lists were refreshed
    earlier in this run)."""
    missing = tuple(r for r in requirements if not r.present(host))
    if not missing:
        return Plan()
    packages = [r.package for r in missing]
    prefix = _privilege(host)
    if host.which("apt-get") is None or prefix is None:
        why = (
            "apt-get is not available" if host.which("apt-get") is None else "not root, no passwordless sudo"
        )
        return Plan(missing, failure=_failure(missing, why))
    install = (*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", *packages)
    update = (*prefix, "apt-get", "update", "-q")
    return Plan(missing, (install,) if updated else (update, install))


def _privilege(host: Host) -> tuple[str, ...] | None:
    if host.euid == 0:
        return ()
    if host.which("sudo") is not None and host.passwordless_sudo():
        return ("sudo", "-n")
    return None


def _failure(missing: Sequence[Requirement], why: str) -> str:
    packages = " ".join(r.package for r in missing)
    found = ", ".join(r.missing for r in missing)
    text = (
        f"the tests need {packages}, which cannot be installed here ({why}); missing: {found}. "
        f"Install with `sudo apt-get install -y {packages}`, or run the tests as root "
        "(or with passwordless sudo) and they install what they need themselves."
    )
    if POSTGRESQL in missing:
        text += f" Instead of PostgreSQL's binaries, {PG_DSN_ENV} may name a server whose user can create databases."
    return text


def _run_apt(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=APT_TIMEOUT, stdin=subprocess.DEVNULL
    )


LOCK_PATH = Path(tempfile.gettempdir()) / f"tether-tests-provision-{os.getuid()}.lock"
"""One per user: another user's lock file in ``/tmp`` cannot be opened (sticky directory)."""


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide provisioning lock: one apt run at a time across parallel workers."""
    with open(LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ProvisionFailed(Exception):
    """The run cannot have what it needs; the message says what to install."""


class Provisioner:
    """Carries out plans, refreshing apt's lists at most once per run."""

    def __init__(
        self,
        say: Callable[[str], None],
        host: Host | None = None,
        run: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None,
    ) -> None:
        self.say = say
        self.host = host or Host()
        self.run = run or _run_apt
        self._updated = False

    def ensure(self, requirements: Sequence[Requirement]) -> None:
        """Install what is missing of ``requirements``, or raise ``ProvisionFailed``."""
        decided = plan(requirements, self.host, updated=self._updated)
        if decided.failure is not None:
            raise ProvisionFailed(decided.failure)
        if not decided.commands:
            return
        packages = " ".join(r.package for r in decided.missing)
        self.say(f"tether tests: installing {packages} with apt-get (missing here; once per machine) ...")
        began = time.monotonic()
        for command in decided.commands:
            done = self.run(command)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
                raise ProvisionFailed(f"`{' '.join(command)}` failed ({done.returncode}):\n{tail}")
            self._updated = self._updated or "update" in command
        still = [r.missing for r in decided.missing if not r.present(self.host)]
        if still:
            raise ProvisionFailed(f"apt-get installed {packages}, yet {', '.join(still)} is still missing")
        self.say(f"tether tests: installed {packages} in {time.monotonic() - began:.0f} s")
