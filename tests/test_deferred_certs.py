"""aiohttp imported through ``import_aiohttp`` loads no CA store at import, and its default SSL contexts
still verify (or not) as ever at their first handshake: an https request with aiohttp's own default
context to a server whose certificate only ``SSL_CERT_FILE`` trusts succeeds, one to a server it does
not trust fails, and ``ssl=False`` connects. Each case in a fresh interpreter (aiohttp is imported here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import asyncio, json, ssl, sys, threading
    from pytest_dspex._support.deferred_certs import import_aiohttp, _DeferredStore

    aiohttp = import_aiohttp()
    import aiohttp.connector as c

    out = {"deferred": [type(c._SSL_CONTEXT_VERIFIED) is _DeferredStore, type(c._SSL_CONTEXT_UNVERIFIED) is _DeferredStore],
           "patch_left": "set_default_verify_paths" in ssl.SSLContext.__dict__}
    out["other_contexts_load"] = ssl.create_default_context().cert_store_stats()["x509_ca"] > 0

    async def main():
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(sys.argv[1], sys.argv[2])

        async def answer(reader, writer):
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session:
            for name, ssl_arg in (("verified", True), ("unverified", False)):
                try:
                    async with session.get(f"https://localhost:{port}/", ssl=ssl_arg) as resp:
                        out[name] = await resp.text()
                except aiohttp.ClientConnectorCertificateError as exc:
                    out[name] = "certificate refused"
        server.close()
        out["plain_after"] = [type(c._SSL_CONTEXT_VERIFIED) is ssl.SSLContext, type(c._SSL_CONTEXT_UNVERIFIED) is ssl.SSLContext]

    asyncio.run(main())
    print(json.dumps(out))
''')


def _cert(tmp_path, name: str) -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "2",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
@pytest.mark.parametrize("trusted", [True, False], ids=["cert-trusted", "cert-not-trusted"])
def test_aiohttp_default_contexts_load_the_store_at_first_handshake(tmp_path, monkeypatch, trusted):
    import json

    cert, key = _cert(tmp_path, "server")
    other, _ = _cert(tmp_path, "other")
    monkeypatch.setenv("SSL_CERT_FILE", cert if trusted else other)  # the store the default contexts load
    (tmp_path / "run.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), cert, key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["deferred"] == [True, True] and not out["patch_left"]
    assert out["other_contexts_load"]  # a context made after the import loads its store at once, as ever
    assert out["verified"] == ("ok" if trusted else "certificate refused")
    assert out["unverified"] == "ok"
    assert out["plain_after"] == [True, True]
