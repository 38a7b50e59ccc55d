"""Reading the images of a request, for backends that need the pixels (a local vision model).

Only ``data:`` URLs and http(s) URLs are read. An http(s) URL whose host resolves to a private, loopback,
link-local or otherwise non-public address is refused unless the config allows it (no server-side request
forgery into the gateway's network); redirects are followed by hand so every hop is checked. Bodies are
capped at ``max_bytes`` and must be an image type that Pillow decodes. Every refusal is a 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequestError

ALLOWED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp"})


class ImagePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="largest image accepted")
    allow_private_hosts: bool = Field(default=False, description="allow URLs resolving to non-public addresses")
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    max_redirects: int = Field(default=3, ge=0)


def _refuse(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="messages", code="invalid_image_url")


def _decode(data: bytes, content_type: str, policy: ImagePolicy, where: str):  # type: ignore[no-untyped-def]
    from PIL import Image, UnidentifiedImageError

    if content_type.split(";")[0].strip().lower() not in ALLOWED_TYPES:
        raise _refuse(f"{where}: content type '{content_type}' is not an image type the gateway reads "
                      f"({', '.join(sorted(ALLOWED_TYPES))})")
    if len(data) > policy.max_bytes:
        raise _refuse(f"{where}: the image is {len(data)} bytes; the limit is {policy.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _refuse(f"{where}: the data is not a readable image ({exc})") from None
    return image.convert("RGB")


def _from_data_url(url: str, policy: ImagePolicy):  # type: ignore[no-untyped-def]
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise _refuse("a data: image URL must be of the form data:image/<type>;base64,<data>")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise _refuse(f"data: URL: the image is larger than the limit of {policy.max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("data: URL: the payload is not valid base64") from None
    return _decode(data, header[: -len(";base64")], policy, "data: URL")


async def _check_host(host: str, port: int, policy: ImagePolicy) -> None:
    if policy.allow_private_hosts:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise _refuse(f"image URL host '{host}' does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise _refuse(f"image URL host '{host}' resolves to the non-public address {address}; the gateway "
                          "does not fetch from private, loopback or link-local networks")


async def load_image(url: str, policy: ImagePolicy):  # type: ignore[no-untyped-def]
    """The RGB ``PIL.Image`` behind an ``image_url``, or a 400 saying why it cannot be read."""
    if url.startswith("data:"):
        return _from_data_url(url, policy)
    for _ in range(policy.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refuse(f"image URL '{url[:100]}' is neither a data: URL nor an http(s) URL")
        await _check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), policy)
        async with httpx.AsyncClient(timeout=policy.fetch_timeout_s, follow_redirects=False) as client:
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise _refuse(f"image URL answered {response.status_code}")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > policy.max_bytes:
                        raise _refuse(f"image URL: {declared} bytes; the limit is {policy.max_bytes}")
                    body = bytearray()
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > policy.max_bytes:
                            raise _refuse(f"image URL: more than the limit of {policy.max_bytes} bytes")
                    return _decode(bytes(body), response.headers.get("content-type", ""), policy, "image URL")
            except httpx.HTTPError as exc:
                raise _refuse(f"image URL could not be fetched: {type(exc).__name__}") from None
    raise _refuse(f"image URL redirected more than {policy.max_redirects} times")
