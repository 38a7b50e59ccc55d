"""Images the gateway reads itself (local vision backends): URL policy, size and type checks, and a tiny
randomly initialised vision-language model answering through the ECSO stage."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import socket

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from starlette.responses import Response

from gateway.core.errors import InvalidRequestError
from gateway.core.images import ImagePolicy, check_address, load_image
from tests.support.servers import ServerThread


def _png(size=(40, 30), color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def image_server():
    app = FastAPI()

    @app.get("/ok.png")
    def ok() -> Response:
        return Response(_png(), media_type="image/png")

    @app.get("/page")
    def page() -> Response:
        return Response("<html></html>", media_type="text/html")

    @app.get("/big.png")
    def big() -> Response:
        return Response(b"\x89PNG" + b"0" * 300_000, media_type="image/png")

    @app.get("/redirect")
    def redirect() -> Response:
        return Response(status_code=302, headers={"location": "/ok.png"})

    with ServerThread(app) as server:
        yield server


def _load(url: str, **policy):
    return asyncio.run(load_image(url, ImagePolicy(**policy)))


def test_data_url_is_decoded():
    image = _load(_data_url(_png((40, 30))))
    assert image.size == (40, 30) and image.mode == "RGB"


@pytest.mark.parametrize(("url", "fragment"), [
    ("ftp://example.com/a.png", "neither a data: URL nor an http(s) URL"),
    ("file:///etc/passwd", "neither a data: URL nor an http(s) URL"),
    ("data:image/png,notbase64", "must be of the form"),
    ("data:image/png;base64,@@@@", "not valid base64"),
    (_data_url(b"hello", "text/plain"), "content type 'text/plain'"),
    (_data_url(b"not an image"), "not a readable image"),
    ("http://127.0.0.1:9/x.png", "non-public address 127.0.0.1"),
    ("http://169.254.169.254/latest/meta-data", "non-public address 169.254.169.254"),
    ("http://10.1.2.3/x.png", "non-public address 10.1.2.3"),
    ("http://[::1]/x.png", "non-public address ::1"),
    ("http://localhost/x.png", "non-public address"),
])
def test_refused_urls(url, fragment):
    with pytest.raises(InvalidRequestError) as info:
        _load(url)
    assert fragment in info.value.message and info.value.status_code == 400


def test_size_limit():
    with pytest.raises(InvalidRequestError, match="larger than the limit"):
        _load(_data_url(_png((600, 600), (1, 2, 3)) * 4), max_bytes=1000)


def test_private_hosts_only_when_allowed(image_server):
    with pytest.raises(InvalidRequestError, match="non-public address"):
        _load(f"{image_server.url}/ok.png")
    assert _load(f"{image_server.url}/ok.png", allow_private_hosts=True).size == (40, 30)
    assert _load(f"{image_server.url}/redirect", allow_private_hosts=True).size == (40, 30)
    with pytest.raises(InvalidRequestError, match="content type 'text/html"):
        _load(f"{image_server.url}/page", allow_private_hosts=True)
    with pytest.raises(InvalidRequestError, match="limit is 1000"):
        _load(f"{image_server.url}/big.png", allow_private_hosts=True, max_bytes=1000)


@pytest.mark.parametrize(("address", "verdict"), [
    ("93.184.216.34", None),
    ("2606:2800:220:1:248:1893:25c8:1946", None),
    ("64:ff9b::7f00:1", "tunnelled"),  # NAT64 of 127.0.0.1: "global" to Python 3.11
    ("64:ff9b::a9fe:a9fe", "tunnelled"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::1", "tunnelled"),  # 6to4 of 127.0.0.1
    ("::ffff:127.0.0.1", "non-public address 127.0.0.1"),  # IPv4-mapped: judged by what it maps
    ("::ffff:93.184.216.34", None),
    ("100.64.0.1", "non-public"),  # carrier-grade NAT
])
def test_address_check(address, verdict):
    reason = check_address(ipaddress.ip_address(address))
    assert reason is None if verdict is None else verdict in reason


def test_the_fetch_connects_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: the name resolves to a public address for the check and to 127.0.0.1 afterwards. The
    gateway must connect to the checked address, never look the name up again."""
    hits = []
    app = FastAPI()

    @app.get("/secret.png")
    def secret() -> Response:
        hits.append(1)
        return Response(_png(), media_type="image/png")

    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.example":
            lookups.append(host)
            address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with ServerThread(app) as server:
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(InvalidRequestError, match="could not be fetched"):
            _load(f"http://rebind.example:{port}/secret.png", fetch_timeout_s=1)
    assert lookups == ["rebind.example"] and not hits


def test_decompression_bombs_and_huge_images_are_400s():
    # A 10000 x 10000 PNG of one colour compresses to a few hundred kilobytes.
    with pytest.raises(InvalidRequestError, match="100000000 pixels|too many pixels"):
        _load(_data_url(_png((10000, 10000), (0, 0, 0))))
    with pytest.raises(InvalidRequestError, match="the limit is 1000"):
        _load(_data_url(_png((40, 30))), max_pixels=1000)


@pytest.fixture(scope="module")
def vlm_gateway(tmp_path_factory):
    from gateway.core.config import parse_config
    from gateway.http import create_app
    from tests.support.servers import wait_for
    from tests.support.tiny_vlm import build_tiny_vlm

    path = build_tiny_vlm(tmp_path_factory.mktemp("vlm"))
    app = create_app(parse_config({"models": [{"name": "tiny-vlm", "backend": "local", "path": str(path),
                                               "vision": True, "stages": ["ecso"], "default_max_tokens": 8}]}))
    with ServerThread(app) as server:
        wait_for(f"{server.url}/ready")
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_local_vision_model_answers_through_ecso(vlm_gateway, stream):
    payload = {"model": "tiny-vlm", "max_tokens": 6, "temperature": 0, "stream": stream, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                     {"type": "image_url", "image_url": {"url": _data_url(_png())}}]}]}
    response = httpx.post(f"{vlm_gateway.url}/v1/chat/completions", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-stages"] == "ecso"
    if stream:  # a held stream starts at once, so the verdict travels in every chunk rather than a header
        chunks = [json.loads(line[len("data: "):]) for line in response.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert chunks and {chunk["ecso"] for chunk in chunks} <= {"safe", "rewritten"}
        assert len({chunk["ecso"] for chunk in chunks}) == 1
    else:
        assert response.headers["x-gateway-ecso"] in ("safe", "rewritten")  # a random model says anything
        body = response.json()
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] >= 6 + 1  # the answer and at least the check
        assert body["usage"]["prompt_tokens"] > 0


@pytest.mark.slow
def test_local_vision_model_refuses_private_image_urls(vlm_gateway):
    response = httpx.post(f"{vlm_gateway.url}/v1/chat/completions", timeout=30, json={
        "model": "tiny-vlm", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}]}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image_url"
    assert "non-public address 10.0.0.1" in response.json()["error"]["message"]
