"""Egress: an allowed host that reflects requests cannot hand a secret back in any encoding.

A real sandbox (``tests.support.egress_sandbox``) holds two ``environment_variable``
credentials as placeholders: ``KEY`` (substituted in headers) and ``BODY_KEY``
(substituted in bodies), both for ``api.allowed.test``. A loopback TLS server,
``Reflector``, stands in for that host and echoes every request back the way the
query string asks: compressed, base64-encoded at any alignment, hex,
percent-encoded, JSON- or HTML-escaped, upper-cased, split into chunks, in
response headers, the reason phrase, a redirect, a 1xx response, trailers...

Every test asserts that the legitimate path worked (the reflector did receive the
real value, so an unscrubbed echo would have leaked it) and that nothing the
sandbox got back holds a secret in any encoding (``leaks``, an oracle written
independently of the proxy's own scrubber): not the tool output, not any file a
command wrote (read from the host), not the sandbox server's log, not what a
host outside the credential's allow-list received. Two tests need no sandbox: the
proxy's scrubber on its own, against every reflection cut into pieces at many
points, and the bounds of its decoder.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import secrets
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mcp import Client

from sandbox_server.egress.codings import OUTPUT_CHUNK, CodingError, decoder_for
from sandbox_server.egress.forms import value_forms
from sandbox_server.egress.scrub import Scrub
from tests.escape.support import bash, needs_python, requires_bwrap, still_answers, text
from tests.support.egress import RecordingServer, TestPKI, credentials_responder
from tests.support.processes import ServerProcess, running_sandbox, sandbox_client
from tests.support.reflector import Reflector, Request, big_body, leaks, transform

pytestmark = [requires_bwrap, needs_python]

MODULE = "tests.support.egress_sandbox"
LIMIT_FLAGS = ["--timeout", "20", "--pids", "128", "--memory", "256M", "--disk-quota", "32M"]
CURL = "curl -sS --max-time 15 --suppress-connect-headers"
API = "https://api.allowed.test"


def test_the_oracle_finds_what_it_should() -> None:
    secret = 'sk_live_0123456789~?>/+"\\é'.encode()
    escaped = json.dumps(secret.decode()).encode()
    misread = json.dumps(secret.decode("latin-1")).encode()
    for data in (
        secret.upper(),
        secret.hex().upper().encode(),
        base64.b64encode(b"user:" + secret),
        base64.urlsafe_b64encode(b"xy" + secret).rstrip(b"="),
        base64.encodebytes(b"z" * 70 + secret),
        urllib.parse.quote(secret, safe="").encode(),
        escaped,
        misread,
        urllib.parse.quote(misread).encode(),
        json.dumps(base64.b64encode(escaped).decode()).replace("/", "\\/").encode(),
        "".join(f"&#{c};" for c in escaped).encode(),
        gzip.compress(b"{" + base64.b64encode(secret) + b"}"),
    ):
        assert leaks(b"<" + data + b">", secret), data
    assert leaks(b"nothing to see " + secret[:-1] + b" " + base64.b64encode(secret[1:]), secret) == []


# --------------------------------------------------------------------------- the reflecting host


def _scrubbed_in_pieces(scrub: Scrub, data: bytes, cuts: list[int]) -> bytes:
    stream = scrub.stream()
    bounds = [0, *cuts, len(data)]
    return b"".join(stream.feed(data[a:b]) for a, b in itertools.pairwise(bounds)) + stream.flush()


def test_the_scrubber_finds_every_reflection_however_the_stream_is_cut() -> None:
    secret = f'sk_live_{secrets.token_hex(8)}~?>/+"\\é'.encode()
    placeholder = ("tether-ph-" + secrets.token_hex(16)).encode()
    scrub = Scrub(tuple(value_forms(secret, placeholder)))
    # Padding puts each value beyond the bytes a stream scrubber holds back, so cuts land anywhere.
    pad = [("X-Pad", "p" * 1500)]
    request = Request("POST", "/r", [*pad, ("X-Key", secret.decode("latin-1"))], b"t=" + b"y" * 1200 + secret)
    basic = Request(
        "GET", "/r", [*pad, ("Authorization", "Basic " + base64.b64encode(b"ab:" + secret).decode())], b""
    )
    assert scrub.window < 1500
    forms = ["json", "b64", "b64url", "mime", "hex", "pct", "pctall", "json_u", "json_b64", "html"]
    # (Upper-casing base64 loses the value, so it is tried on the header value only.)
    for echo, extra in ((request, ["upper"]), (basic, [])):
        for form in forms + extra:
            for prefix in range(3) if form in ("b64", "b64url", "mime", "json_b64") else (1,):
                data = transform(form, b"P" * prefix + echo.echo())
                assert leaks(data, secret), "the oracle sees the leak the scrubber must remove"
                splits = [[], [len(data) // 2], list(range(1, len(data), 97)), list(range(1, len(data), 61))]
                if echo is request and prefix == 1 and form == "json":
                    splits += [[cut] for cut in range(1, len(data), 5)]  # two pieces, cut (almost) anywhere
                for cuts in splits:
                    out = _scrubbed_in_pieces(scrub, data, cuts)
                    assert leaks(out, secret) == [], (form, prefix, cuts[:3])


def test_decoding_is_lazy_and_bounded() -> None:
    bomb = gzip.compress(gzip.compress(bytes(64 * 1024 * 1024)))  # 64 MiB from about 100 bytes
    decoder = decoder_for(["gzip", "gzip"])
    assert decoder is not None
    sizes = [len(piece) for piece in itertools.islice(decoder.feed(bomb), 100)]
    assert max(sizes) <= OUTPUT_CHUNK, "never more than a chunk at a time, however much it inflates"
    for coding in ("br", "zstd", "compress", "x-anything"):
        with pytest.raises(CodingError, match="cannot be decoded"):
            decoder_for(["gzip", coding])
    truncated = decoder_for(["deflate"])
    assert truncated is not None
    list(truncated.feed(zlib.compress(b"x" * 1000)[:-6]))
    with pytest.raises(CodingError, match="ended early"):
        list(truncated.finish())


# --------------------------------------------------------------------------- the sandbox around it


@dataclass
class World:
    pki: TestPKI
    reflector: Reflector
    plain: RecordingServer
    """``plain.allowed.test``: allowed by the egress policy, but no credential applies to it."""
    credentials: RecordingServer
    token: str
    secrets: dict[str, str]
    placeholders: dict[str, str]
    server: ServerProcess | None = None
    workspace: Path | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.secrets["KEY"]

    def document(self) -> dict[str, object]:
        def credential(name: str, header: bool, body: bool) -> dict[str, object]:
            return {
                "type": "environment_variable",
                "secret_name": name,
                "placeholder": self.placeholders[name],
                "secret_value": self.secrets[name],
                "networking": {"type": "limited", "allowed_hosts": ["api.allowed.test"]},
                "injection_location": {"header": header, "body": body},
            }

        return {"credentials": [credential("KEY", True, False), credential("BODY_KEY", False, True)]}

    def everything_seen(self) -> list[tuple[str, bytes]]:
        """What the model could see or a foreign host received, each with a name for messages."""
        seen = [("tool output", "\n".join(self.outputs).encode())]
        if self.workspace is not None:
            seen += [(f"file {p.name}", p.read_bytes()) for p in self.workspace.rglob("*") if p.is_file()]
        if self.server is not None:
            seen.append(("sandbox server log", "\n".join(self.server.output).encode()))
        seen.append(("plain.allowed.test", self.plain.everything_received().encode("latin-1")))
        return seen


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("egress-encodings")
    pki = TestPKI(root)
    token = "tok_" + secrets.token_hex(16)
    world = World(
        pki=pki,
        reflector=Reflector(pki.server_context(["api.allowed.test"])),
        plain=RecordingServer(),
        credentials=RecordingServer(),
        token=token,
        # Characters that percent-encoding, base64's two alphabets and JSON all treat differently.
        secrets={
            "KEY": f"sk_live_{secrets.token_hex(10)}~?>/+{secrets.token_hex(3)}",
            "BODY_KEY": f'bk_{secrets.token_hex(10)}"\\é<&{secrets.token_hex(3)}',
        },
        placeholders={name: "tether-ph-" + secrets.token_hex(16) for name in ("KEY", "BODY_KEY")},
    )
    world.credentials.responder = credentials_responder(token, world.document())
    yield world
    world.reflector.close()
    world.plain.close()
    world.credentials.close()


@pytest.fixture(scope="module")
def egress_sandbox(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workspace = tmp_path_factory.mktemp("egress-encodings-ws")
    args = [
        "--workspace", str(workspace), "--port", "0", *LIMIT_FLAGS,
        "--egress", "limited",
        "--allow-host", "api.allowed.test",
        "--allow-host", "plain.allowed.test",
        "--session-id", "sesn_encodings",
        "--upstream-ca", str(world.pki.ca_path),
        "--egress-resolve", f"api.allowed.test=127.0.0.1:{world.reflector.port}",
        "--egress-resolve", f"plain.allowed.test=127.0.0.1:{world.plain.port}",
        "--credentials-url", f"http://127.0.0.1:{world.credentials.port}/v1/credentials",
    ]  # fmt: skip
    with running_sandbox(args, env={"TETHER_EGRESS_TOKEN": world.token}, module=MODULE) as server:
        world.server, world.workspace = server, workspace
        yield server


@pytest.fixture
async def sbx(egress_sandbox: ServerProcess, world: World) -> AsyncIterator[Client]:
    async with sandbox_client(egress_sandbox.mcp_url, egress_sandbox.headers) as connected:
        await connected.call_tool("bash", {"restart": True})
        yield connected
    assert egress_sandbox.process.poll() is None, "the sandbox server died"


@pytest.fixture(autouse=True)
def nothing_leaked(world: World) -> Iterator[None]:
    """After each test: no secret, in any encoding, anywhere the model or a foreign host could look."""
    yield
    seen = world.everything_seen()
    outputs, world.outputs = world.outputs, []  # each test is judged on what it produced
    if world.workspace is not None:
        for path in world.workspace.rglob("*"):
            if path.is_file():
                path.unlink()
    for where, data in seen:
        for name, value in world.secrets.items():
            assert leaks(data, value.encode()) == [], f"{name} leaked into the {where}"
    assert world.token not in "\n".join(outputs)


async def run(client: Client, world: World, command: str) -> str:
    out = text(await bash(client, command))
    world.outputs.append(out)
    return out


async def fetch(client: Client, world: World, name: str, query: str, *, options: str = "") -> str:
    """``curl -i`` the reflector with ``X-Key: $KEY``, saving the response (head included) as ``out/name``."""
    return await run(
        client,
        world,
        f'mkdir -p out && {CURL} -i {options} -H "X-Key: $KEY" "{API}/r?{query}" -o out/{name}; '
        f"cat -v out/{name}",
    )


def reflected_since(world: World, mark: int) -> list[Request]:
    return world.reflector.received[mark:]


def assert_reached_with_the_secret(world: World, mark: int, count: int | None = None) -> None:
    """The legitimate path: each request reached the reflector carrying the real value."""
    received = reflected_since(world, mark)
    assert received, "nothing reached the allowed host"
    if count is not None:
        assert len(received) == count
    for request in received:
        value = request.value
        if value.startswith(b"Basic "):
            value = base64.b64decode(value[6:])
        assert world.key.encode() in value, "the allowed host gets the real value"


def head_and_body(world: World, name: str) -> tuple[bytes, bytes]:
    assert world.workspace is not None
    head, _, body = (world.workspace / "out" / name).read_bytes().partition(b"\r\n\r\n")
    return head, body


# --------------------------------------------------------------------------- the attempts


@pytest.mark.anyio
async def test_gzip_and_deflate_responses_are_decoded_then_scrubbed(sbx: Client, world: World) -> None:
    placeholder = world.placeholders["KEY"].encode()
    for coding in ("gzip", "deflate", "deflate-raw", "gzip,deflate"):
        mark = len(world.reflector.received)
        await fetch(sbx, world, f"ce-{coding}", f"ce={coding}", options="-H 'Accept-Encoding: gzip, deflate'")
        assert_reached_with_the_secret(world, mark, 1)
        assert reflected_since(world, mark)[0].header("accept-encoding") == "identity"
        head, body = head_and_body(world, f"ce-{coding}")
        assert head.startswith(b"HTTP/1.1 200"), (coding, head, body[:400])
        assert b"content-encoding" not in head.lower(), "sent on decoded"
        assert placeholder in body, "the echo shows the placeholder where the secret was"
        assert json.loads(body)["headers"]["X-Key"] == world.placeholders["KEY"], (coding, head, body[:400])
    # And a client that decodes for itself (curl --compressed) gets the same.
    out = await run(sbx, world, f'{CURL} --compressed -H "X-Key: $KEY" "{API}/r?ce=gzip"')
    assert json.loads(out)["headers"]["X-Key"] == world.placeholders["KEY"]
    await still_answers(sbx)


@pytest.mark.anyio
async def test_encodings_the_proxy_cannot_read_are_refused(sbx: Client, world: World) -> None:
    for coding in ("br", "zstd", "x-tether-unknown", "gzip,br"):
        mark = len(world.reflector.received)
        out = await fetch(sbx, world, f"refused-{coding}", f"ce={coding}")
        assert_reached_with_the_secret(world, mark, 1)
        assert out.startswith("HTTP/1.1 502"), coding
        assert "cannot be decoded by the proxy" in out
        assert "could not be scrubbed" in out
        assert repr(coding.split(",")[-1]) not in out, "a reflected header value is never echoed back"
    await still_answers(sbx)


@pytest.mark.anyio
async def test_a_reflected_basic_credential_comes_back_as_the_client_sent_it(
    sbx: Client, world: World
) -> None:
    placeholder = world.placeholders["KEY"]
    sent = "Basic " + base64.b64encode(f"user:{placeholder}".encode()).decode()
    built = "Basic " + base64.b64encode(f"user:{world.key}".encode()).decode()
    mark = len(world.reflector.received)
    out = await run(sbx, world, f'{CURL} -i -u "user:$KEY" "{API}/r?form=json&hdr=1"')
    (received,) = reflected_since(world, mark)
    assert received.header("authorization") == built, "the proxy built Basic with the real value"
    assert f'"Authorization": "{sent}"' in out, "the echo shows exactly what the client sent"
    assert f"X-Echo: {sent}" in out
    # Other users (other alignments of the value inside the base64) are caught as well.
    for user in ("u", "us", "use", "a-much-longer-user-name"):
        mark = len(world.reflector.received)
        await run(sbx, world, f'{CURL} -i -u "{user}:$KEY" "{API}/r?form=b64&hdr=1"')
        assert_reached_with_the_secret(world, mark, 1)
    await still_answers(sbx)


@pytest.mark.anyio
async def test_base64_at_every_alignment_and_alphabet(sbx: Client, world: World) -> None:
    mark = len(world.reflector.received)
    for form in ("b64", "b64url", "b64nopad", "mime", "json_b64"):
        for prefix in range(3):
            await fetch(sbx, world, f"{form}-{prefix}", f"form={form}&pre={prefix}")
    assert_reached_with_the_secret(world, mark, 15)
    for prefix in range(3):
        _, body = head_and_body(world, f"b64-{prefix}")
        decoded = base64.b64decode(body)
        assert decoded.startswith(b"P" * prefix + b"{")
        assert world.placeholders["KEY"].encode() in decoded, "the whole-run form decodes to the placeholder"
    await still_answers(sbx)


@pytest.mark.anyio
async def test_percent_hex_json_html_and_case_forms(sbx: Client, world: World) -> None:
    forms = ("pct", "pctall", "pctlow", "hex", "HEX", "upper", "json_u", "html", "htmlx")
    mark = len(world.reflector.received)
    for form in forms:
        await fetch(sbx, world, form, f"form={form}")
    assert_reached_with_the_secret(world, mark, len(forms))
    _, body = head_and_body(world, "hex")
    assert world.placeholders["KEY"].encode() in bytes.fromhex(body.decode())
    _, body = head_and_body(world, "pct")
    assert world.placeholders["KEY"].encode() in urllib.parse.unquote_to_bytes(body)
    await still_answers(sbx)


@pytest.mark.anyio
async def test_a_body_secret_echoed_json_escaped(sbx: Client, world: World) -> None:
    body_key = world.secrets["BODY_KEY"]
    assert json.dumps(body_key)[1:-1] != body_key, "the value changes when JSON-escaped"
    mark = len(world.reflector.received)
    out = await run(
        sbx,
        world,
        'printf "token=%s" "$BODY_KEY" > payload && '
        f"{CURL} --data-binary @payload '{API}/r?form=json'; echo; "
        f"{CURL} --data-binary @payload '{API}/r?form=json_u'; echo; "
        f"{CURL} --data-binary @payload '{API}/r?form=html'",
    )
    received = reflected_since(world, mark)
    assert [r.body for r in received] == [f"token={body_key}".encode()] * 3
    assert json.loads(out.splitlines()[0])["body"] == "token=" + world.placeholders["BODY_KEY"]
    await still_answers(sbx)


@pytest.mark.anyio
async def test_values_split_across_chunks_and_reads(sbx: Client, world: World) -> None:
    mark = len(world.reflector.received)
    for name, query in (
        ("chunks-1", "form=json&chunks=1"),
        ("chunks-7", "form=b64&pre=1&chunks=7"),
        ("chunks-gzip", "ce=gzip&chunks=3"),
        ("chunks-trailer", "form=hex&trailer=1"),
    ):
        await fetch(sbx, world, name, query)
    await fetch(sbx, world, "http10", "form=json&chunks=5", options="--http1.0")
    assert_reached_with_the_secret(world, mark, 5)
    head, _ = head_and_body(world, "http10")
    assert head.startswith(b"HTTP/1.0 200") and b"transfer-encoding" not in head.lower()
    _, body = head_and_body(world, "chunks-1")
    assert json.loads(body)["headers"]["X-Key"] == world.placeholders["KEY"]
    _, body = head_and_body(world, "chunks-trailer")
    assert b"X-Trailer" not in body, "trailers are dropped"

    # Bodies too large to buffer are scrubbed as they stream, values straddling every boundary.
    size = 3_000_000
    mark = len(world.reflector.received)
    out = await run(
        sbx,
        world,
        f'{CURL} -H "X-Key: $KEY" "{API}/r?big={size}" -o out/big -D out/big-head; wc -c < out/big; '
        f'{CURL} --http1.0 -H "X-Key: $KEY" "{API}/r?big={size}" -o out/big10; wc -c < out/big10',
    )
    assert_reached_with_the_secret(world, mark, 2)
    assert world.workspace is not None
    big = (world.workspace / "out" / "big").read_bytes()
    assert b"chunked" in (world.workspace / "out" / "big-head").read_bytes().lower()
    expected, offsets = big_body(world.placeholders["KEY"].encode(), size)
    placeholder = world.placeholders["KEY"].encode()
    assert big.count(placeholder) == len(offsets), out
    assert abs(len(big) - len(expected)) < 100, "only the values changed"
    assert (world.workspace / "out" / "big10").read_bytes() == big
    await still_answers(sbx)


@pytest.mark.anyio
async def test_protocol_upgrades_are_refused(sbx: Client, world: World) -> None:
    mark = len(world.reflector.received)
    for upgrade in ("websocket", "h2c"):
        out = await run(
            sbx,
            world,
            f'{CURL} -i -H "X-Key: $KEY" -H "Connection: Upgrade" -H "Upgrade: {upgrade}" '
            f'-H "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" -H "Sec-WebSocket-Version: 13" {API}/ws',
        )
        assert out.startswith("HTTP/1.1 501"), upgrade
        assert "protocol upgrades (WebSocket, h2c) are refused" in out
    assert reflected_since(world, mark) == [], "refused before anything went upstream"
    assert world.server is not None
    refusals = [line for line in world.server.output if "protocol upgrades" in line]
    assert refusals and all('"decision":"deny"' in line for line in refusals), "and logged"

    # An upstream that switches protocols unasked, the secret in what follows, is refused too.
    out = await fetch(sbx, world, "unasked-101", "status=101")
    assert_reached_with_the_secret(world, mark, 1)
    assert out.startswith("HTTP/1.1 502") and "switched protocols unasked" in out
    await still_answers(sbx)


@pytest.mark.anyio
async def test_reflection_in_the_response_head(sbx: Client, world: World) -> None:
    placeholder = world.placeholders["KEY"]
    mark = len(world.reflector.received)
    out = await fetch(sbx, world, "head", "form=json&hdr=1&reason=1")
    assert_reached_with_the_secret(world, mark, 1)
    head, _ = head_and_body(world, "head")
    assert head.startswith(f"HTTP/1.1 200 {placeholder}".encode()), "the reason phrase is scrubbed"
    assert f"X-Echo: {placeholder}" in out
    assert f"X-{placeholder.encode().hex()}: name" in out, "header names are scrubbed too"
    assert "Set-Cookie: c=" + base64.b64encode(placeholder.encode()).decode() in out
    # In an interim (1xx) response's head as well.
    out = await fetch(sbx, world, "early", "form=json&early=1")
    assert_reached_with_the_secret(world, mark, 2)
    assert "HTTP/1.1 200" in out
    await still_answers(sbx)


@pytest.mark.anyio
async def test_redirects_and_urls_carry_only_the_placeholder_elsewhere(sbx: Client, world: World) -> None:
    placeholder = world.placeholders["KEY"]
    plain_mark, mark = len(world.plain.received), len(world.reflector.received)
    # The allowed host redirects to another host with the value in the URL; curl follows.
    out = await fetch(sbx, world, "redirect", "loc=plain.allowed.test", options="-L")
    assert_reached_with_the_secret(world, mark, 1)
    (followed,) = world.plain.received[plain_mark:]
    assert followed.path.startswith(f"/steal?k={placeholder}&b="), "the Location was scrubbed"
    assert "ok" in out
    # To a host outside the egress allow-list: refused, whatever it carries.
    out = await fetch(sbx, world, "redirect-evil", "loc=evil.test", options="-L")
    assert "403 Forbidden" in out and "not allowed" in out
    # The URL is never a substitution location: the value never travels in a query string.
    await run(sbx, world, f'{CURL} "http://plain.allowed.test/q?k=$KEY"; {CURL} "{API}/r?k=$KEY"')
    assert world.plain.received[-1].path == f"/q?k={placeholder}"
    assert world.reflector.received[-1].target == f"/r?k={placeholder}"
    await still_answers(sbx)


@pytest.mark.anyio
async def test_a_byte_range_cannot_cut_the_value_into_pieces(sbx: Client, world: World) -> None:
    echo_length = len(Request("GET", "/", [], b"").echo())
    mark = len(world.reflector.received)
    for first in range(0, 40, 10):
        await fetch(sbx, world, f"range-{first}", "form=json&range=1", options=f"-r {first}-{first + 9}")
    assert_reached_with_the_secret(world, mark, 4)
    for request in reflected_since(world, mark):
        assert request.header("range") is None, "Range is dropped where secrets are substituted"
    head, body = head_and_body(world, "range-0")
    assert head.startswith(b"HTTP/1.1 200") and len(body) > echo_length
    await still_answers(sbx)
