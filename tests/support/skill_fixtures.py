"""Fixtures the skills tests share: a client whose every answer is checked strictly, and a check
that refused uploads leave the gateway's skills directory as they found it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import gateway_data_dir
from tests.support.processes import ServerProcess
from tests.support.skills import StrictAnswers, sdk, snapshot


@pytest.fixture
def answers() -> Iterator[StrictAnswers]:
    with StrictAnswers.checking() as checker:
        yield checker


@pytest.fixture
def client(gateway: ServerProcess, api_key: str, answers: StrictAnswers) -> Iterator[anthropic.Anthropic]:
    """Every answer this client receives goes through ``answers``."""
    with sdk(gateway.url, api_key, answers) as client:
        yield client


@pytest.fixture
def data_dir(gateway: ServerProcess) -> Path:
    return gateway_data_dir(gateway)


@pytest.fixture
def unchanged(data_dir: Path) -> Iterator[None]:
    """The test's refused uploads leave the skills directory exactly as they found it."""
    before = snapshot(data_dir)
    yield
    assert snapshot(data_dir) == before
