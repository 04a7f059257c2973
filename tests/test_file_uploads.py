"""``client.beta.files.upload`` against a gateway process, and uploaded files in messages.

Uploads stream to ``DATA_DIR/files/<file_id>`` with their SHA-256 and sniffed type recorded;
they are listed, retrieved and deleted (bytes and all) like the SDK documents, are not
downloadable (only session outputs are), and a ``user.message`` naming one reaches the model
as an inline ``base64`` (or ``text``) block with the type read from the bytes. Every answer is
validated against the SDK's own models, with no field the model does not know.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta import BetaFileMetadata
from anthropic.types.beta.beta_deleted_file import BetaDeletedFile
from pydantic import BaseModel

from gateway import ids
from gateway.harness import file_blocks
from gateway.resources import uploads
from gateway.store import open_store
from tests.conftest import Scripts, gateway_data_dir
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import send_and_stream, strictly_valid

LIMIT = 64 * 1024


def _png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = _png()
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def strict_json(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """Validated by the SDK's model, and carrying no field that model does not declare."""
    assert set(raw) <= set(model.model_fields), set(raw) - set(model.model_fields)
    return model.model_validate(raw)


def upload(client: anthropic.Anthropic, file: Any) -> BetaFileMetadata:
    raw = client.beta.files.with_raw_response.upload(file=file).http_response.json()
    metadata: BetaFileMetadata = strict_json(BetaFileMetadata, raw)
    return metadata


def stored_record(gateway: ServerProcess, file_id: str) -> dict[str, Any]:
    """The record as the gateway keeps it, internal fields included (read from its SQLite file)."""
    database = gateway_data_dir(gateway) / "tether.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (body,) = conn.execute("SELECT body FROM resources WHERE id = ?", (file_id,)).fetchone()
    record: dict[str, Any] = json.loads(body)
    return record


def files_dir(gateway: ServerProcess) -> Path:
    return gateway_data_dir(gateway) / "files"


def test_upload_of_bytes_records_size_digest_and_the_type_read_from_the_bytes(
    client: anthropic.Anthropic, gateway: ServerProcess
) -> None:
    metadata = upload(client, PNG)

    assert metadata.id.startswith("file_") and metadata.type == "file"
    assert metadata.mime_type == "image/png"
    assert metadata.size_bytes == len(PNG)
    assert metadata.downloadable is False  # uploads are inputs; only session outputs download
    assert metadata.scope is None and metadata.expires_at is None
    assert metadata.filename == "unnamed.png"  # raw bytes carry no filename: named for their type
    assert (files_dir(gateway) / metadata.id).read_bytes() == PNG
    record = stored_record(gateway, metadata.id)
    assert record["_upload"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert record["_upload"]["sniffed_type"] == "image/png"


def test_upload_of_a_tuple_keeps_its_filename_and_a_declared_type_the_bytes_do_not_contradict(
    client: anthropic.Anthropic, gateway: ServerProcess
) -> None:
    csv = upload(client, ("report.csv", b"a,b\n1,2\n", "text/csv"))
    assert (csv.filename, csv.mime_type, csv.size_bytes) == ("report.csv", "text/csv", 8)

    liar = upload(client, ("picture.png", PDF, "image/png"))  # says PNG, is a PDF
    assert (liar.filename, liar.mime_type) == ("picture.png", "application/pdf")
    record = stored_record(gateway, liar.id)["_upload"]
    assert (record["declared_type"], record["sniffed_type"]) == ("image/png", "application/pdf")

    binary = upload(client, ("blob.txt", b"\x00\x01\x02\xff", "text/plain"))
    assert binary.mime_type == "application/octet-stream"
    unlabelled = upload(client, b"plain words, no label")  # the SDK says octet-stream
    assert (unlabelled.filename, unlabelled.mime_type) == ("unnamed.txt", "text/plain")

    expiring = client.beta.files.upload(file=("soon.txt", b"hello", "text/plain"), expires_in_seconds=3600)
    assert expiring.expires_at is not None
    assert 3599 <= (expiring.expires_at - expiring.created_at).total_seconds() <= 3601


def test_a_path_in_the_filename_is_only_a_label_and_the_bytes_land_under_the_files_dir_by_id(
    client: anthropic.Anthropic, gateway: ServerProcess
) -> None:
    # Where the name would land if it were joined to a path: beside or above the files dir.
    data = gateway_data_dir(gateway)
    targets = [data / "etc" / "passwd", data.parent / "etc" / "passwd", files_dir(gateway) / "passwd"]
    host_passwd = Path("/etc/passwd").read_bytes()

    metadata = upload(client, ("../../etc/passwd", b"root:x:0:0::/root:/bin/sh\n", "text/plain"))

    assert metadata.filename == "passwd"
    assert (files_dir(gateway) / metadata.id).read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
    assert not [target for target in targets if target.exists()]
    assert Path("/etc/passwd").read_bytes() == host_passwd
    assert all(entry.name.startswith("file_") for entry in files_dir(gateway).iterdir())
    windows = upload(client, ("..\\..\\boot.ini", b"[boot]\n", "text/plain"))
    assert windows.filename == "boot.ini"


def test_uploads_are_listed_newest_first_retrieved_and_deleted_with_their_bytes(
    client: anthropic.Anthropic, gateway: ServerProcess
) -> None:
    first = upload(client, ("one.pdf", PDF, "application/pdf"))
    second = upload(client, ("two.png", PNG, "image/png"))

    raw = client.beta.files.with_raw_response.list(limit=2).http_response.json()
    assert set(raw) == {"data", "next_page"}
    listed = [strict_json(BetaFileMetadata, item) for item in raw["data"]]
    assert [f.id for f in listed] == [second.id, first.id]
    assert {f.id for f in client.beta.files.list(ids=[first.id, "file_missing"])} == {first.id}
    assert second.id in {f.id for f in client.beta.files.list()}  # the SDK's pager walks every page
    raw_one = client.beta.files.with_raw_response.retrieve_metadata(first.id).http_response.json()
    assert strict_json(BetaFileMetadata, raw_one) == first

    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.files.download(first.id)
    assert refused.value.error_code == "file_not_downloadable"

    deleted = client.beta.files.with_raw_response.delete(first.id).http_response.json()
    assert strict_json(BetaDeletedFile, deleted) == BetaDeletedFile(id=first.id, type="file_deleted")
    assert not (files_dir(gateway) / first.id).exists()
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(first.id)
    assert first.id not in {f.id for f in client.beta.files.list()}
    assert (files_dir(gateway) / second.id).exists()


def test_an_upload_without_a_file_part_or_with_an_unknown_field_is_a_400(
    gateway: ServerProcess, api_key: str
) -> None:
    with httpx2.Client(base_url=gateway.url, headers={"x-api-key": api_key}) as http:
        missing = http.post("/v1/files", data={"expires_in_seconds": "3600"}, files={"other": ("a", b"x")})
        assert missing.status_code == 400
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert "other" in missing.json()["error"]["message"]
        empty = http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"expires_in_seconds": "5"})
        assert empty.status_code == 400 and "expires_in_seconds" in empty.json()["error"]["message"]
        json_body = http.post("/v1/files", json={"file": "x"})
        assert json_body.status_code == 400 and "multipart/form-data" in json_body.json()["error"]["message"]
    assert not any(entry.name.startswith(".upload-") for entry in files_dir(gateway).iterdir())


@pytest.fixture(scope="module")
def small_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    """A gateway whose upload limit is ``LIMIT`` bytes."""
    data_dir = tmp_path_factory.mktemp("small-uploads")
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_MAX_UPLOAD_BYTES": str(LIMIT),
    }
    with running_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env) as server:
        server.data_dir = data_dir  # type: ignore[attr-defined]
        yield server


@pytest.mark.parametrize("size", [LIMIT + 1, 4 * LIMIT])
def test_an_upload_over_the_limit_is_a_413_and_leaves_nothing_on_disk(
    small_gateway: ServerProcess, api_key: str, size: int
) -> None:
    with anthropic.Anthropic(base_url=small_gateway.url, api_key=api_key, max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError) as refused:
            client.beta.files.upload(file=("big.bin", b"x" * size, "application/octet-stream"))
        assert refused.value.status_code == 413
        assert refused.value.body == {
            "type": "error",
            "error": {
                "type": "request_too_large",
                "message": f"file: exceeds the upload limit of {LIMIT} bytes",
            },
        }
        assert list(client.beta.files.list()) == []
        directory = files_dir(small_gateway)
        assert not directory.exists() or list(directory.iterdir()) == []

        at_limit = upload(client, ("full.bin", b"y" * LIMIT, "application/octet-stream"))
        assert at_limit.size_bytes == LIMIT
        client.beta.files.delete(at_limit.id)
    assert "Traceback" not in "\n".join(small_gateway.output)


def _agent_and_session(client: anthropic.Anthropic, marker: str, environment: Any) -> Any:
    agent = client.beta.agents.create(name="reader", model="claude-sonnet-4-6", system=marker)
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id)


def _file_block(kind: str, file_id: str) -> dict[str, Any]:
    return {"type": kind, "source": {"type": "file", "file_id": file_id}}


def test_a_message_naming_an_unknown_or_unfit_file_is_a_400_naming_it(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "never asked"}]}])
    session = _agent_and_session(client, marker, environment)
    unknown = "file_011CNotUploadedHere"

    with pytest.raises(anthropic.BadRequestError, match=unknown):
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [_file_block("image", unknown)]}]
        )
    text = upload(client, ("notes.txt", b"plain words\n", "text/plain"))
    with pytest.raises(anthropic.BadRequestError, match=f"{text.id}.*text/plain"):
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [_file_block("image", text.id)]}]
        )
    with pytest.raises(anthropic.BadRequestError, match=unknown):
        client.beta.sessions.create(
            agent=session.agent.id,
            environment_id=environment.id,
            initial_events=[{"type": "user.message", "content": [_file_block("document", unknown)]}],
        )
    assert client.beta.sessions.events.list(session.id).data == []  # nothing was logged


def test_uploaded_image_pdf_and_text_reach_the_model_inline_while_the_log_keeps_the_reference(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "I see a picture and two documents."}]}])
    session = _agent_and_session(client, marker, environment)
    image = upload(client, ("pixel.png", PNG, "image/png"))
    pdf = upload(client, ("doc.pdf", PDF, "application/pdf"))
    notes = upload(client, ("notes.md", "# Notes\nüber alles\n".encode(), "text/markdown"))
    content = [
        {"type": "text", "text": "What is in these?"},
        _file_block("image", image.id),
        {**_file_block("document", pdf.id), "title": "The PDF"},
        _file_block("document", notes.id),
    ]

    streamed = send_and_stream(client, session.id, [{"type": "user.message", "content": content}])

    assert streamed[-1].type == "session.status_idle"
    [request] = scripts.requests_for(marker)
    # Prompt caching marks the last block; what it marks is what matters here.
    sent = [
        {k: v for k, v in block.items() if k != "cache_control"}
        for block in request["messages"][0]["content"]
    ]
    assert sent[0] == {"type": "text", "text": "What is in these?"}
    assert sent[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
    }
    assert sent[2] == {
        "type": "document",
        "title": "The PDF",
        "source": {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(PDF).decode()},
    }
    assert sent[3] == {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "# Notes\nüber alles\n"},
    }
    raw_events = client.beta.sessions.events.with_raw_response.list(session.id).http_response.json()["data"]
    strictly_valid(raw_events)
    [logged] = [event for event in raw_events if event["type"] == "user.message"]
    assert logged["content"][1:] == [
        _file_block("image", image.id),
        {**_file_block("document", pdf.id), "title": "The PDF"},
        _file_block("document", notes.id),
    ]
    assert "base64" not in json.dumps(raw_events)


def test_a_file_deleted_after_its_message_is_sent_to_the_model_as_a_note_saying_so(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "A green pixel."}]},
            {"content": [{"type": "text", "text": "It is gone now."}]},
        ]
    )
    session = _agent_and_session(client, marker, environment)
    image = upload(client, ("pixel.png", PNG, "image/png"))
    first = {"type": "user.message", "content": [_file_block("image", image.id)]}
    assert send_and_stream(client, session.id, [first])[-1].type == "session.status_idle"

    client.beta.files.delete(image.id)
    second = {"type": "user.message", "content": [{"type": "text", "text": "And now?"}]}
    assert send_and_stream(client, session.id, [second])[-1].type == "session.status_idle"

    earlier, later = scripts.requests_for(marker)
    assert earlier["messages"][0]["content"][0]["source"]["type"] == "base64"
    assert later["messages"][0]["content"][0] == {
        "type": "text",
        "text": f"[image not available: file {image.id!r} not found]",
    }


def test_a_gateway_start_removes_stale_partial_uploads_and_keeps_a_fresh_one(
    tmp_path: Path, model_server: ServerProcess, api_key: str
) -> None:
    """What a gateway killed mid-upload left half-written goes at the next start; a younger
    partial may be a replica's upload in progress on a shared data directory, so it stays."""
    files = tmp_path / "data" / "files"
    files.mkdir(parents=True)
    stale, fresh, kept = files / ".upload-abc.part", files / ".upload-def.part", files / "file_Kept1"
    for path in (stale, fresh, kept):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(kept, (two_hours_ago, two_hours_ago))
    env = {"TETHER_API_KEYS": api_key, "TETHER_MODEL_BASE_URL": model_server.url, "ANTHROPIC_API_KEY": ""}
    with running_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env):
        assert sorted(p.name for p in files.iterdir()) == [".upload-def.part", "file_Kept1"]


@pytest.mark.anyio
async def test_a_file_named_many_times_is_read_and_encoded_once_and_the_request_stays_in_budget() -> None:
    loads: list[str] = []

    async def load(file_id: str, block_type: str) -> uploads.Loaded:
        loads.append(file_id)
        return uploads.Loaded("image/png", b"\x89PNG" + bytes(file_blocks.MAX_INLINE_BYTES // 4))

    block = {"type": "image", "source": {"type": "file", "file_id": "file_Big"}}
    request = {"messages": [{"role": "user", "content": [block] * 10}]}

    sent = await file_blocks.inline_with(request, load)

    content = sent["messages"][0]["content"]
    inlined = [b for b in content if b["type"] == "image"]
    notes = [b for b in content if b["type"] == "text"]
    assert loads == ["file_Big"]
    assert len(inlined) == 2 and inlined[0]["source"] is inlined[1]["source"]  # encoded once
    assert sum(len(b["source"]["data"]) for b in inlined) <= file_blocks.MAX_INLINE_BYTES
    assert len(notes) == 8 and "not sent" in notes[0]["text"]
    assert request["messages"][0]["content"][0] is block  # the logged request is untouched


def test_a_chunked_body_padded_around_its_file_part_is_refused_at_the_limit(
    small_gateway: ServerProcess, api_key: str
) -> None:
    """Without a content length, bytes the parser skips (a preamble) still count."""
    boundary = "b0undary"

    def body() -> Iterator[bytes]:
        for _ in range(16):
            yield b"\r" + b"p" * LIMIT  # preamble the multipart parser drops
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
            f"hi\r\n--{boundary}--\r\n"
        ).encode()

    response = httpx2.post(
        small_gateway.url + "/v1/files",
        headers={"x-api-key": api_key, "content-type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "request_too_large"
    assert [p.name for p in files_dir(small_gateway).glob(".upload-*")] == []


@pytest.mark.anyio
async def test_expired_uploads_lose_their_record_and_bytes_and_nothing_else_does(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/store.db")
    directory = tmp_path / "files"
    directory.mkdir()
    past = ids.timestamp(ids.now() - timedelta(seconds=5))
    future = ids.timestamp(ids.now() + timedelta(hours=1))
    records = {
        "file_Expired1": {"expires_at": past, uploads.UPLOAD: {"sniffed_type": "text/plain"}},
        "file_Later1": {"expires_at": future, uploads.UPLOAD: {"sniffed_type": "text/plain"}},
        "file_Forever1": {uploads.UPLOAD: {"sniffed_type": "text/plain"}},
        "file_Output1": {"scope": {"type": "session", "id": "sesn_x"}},
    }
    try:
        for file_id, fields in records.items():
            await store.insert(uploads.KIND, {"id": file_id, "created_at": ids.timestamp(), **fields})
            (directory / file_id).write_bytes(b"x")

        assert await uploads.remove_expired(store, directory) == 1

        assert await store.get(uploads.KIND, "file_Expired1") is None
        assert sorted(p.name for p in directory.iterdir()) == ["file_Forever1", "file_Later1", "file_Output1"]
        for kept in ("file_Later1", "file_Forever1", "file_Output1"):
            assert await store.get(uploads.KIND, kept) is not None
    finally:
        await store.close()
