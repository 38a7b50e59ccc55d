"""Reading the images of a request, for backends that need the pixels (a local vision model).

Only ``data:`` URLs and http(s) URLs are read. An http(s) URL whose host resolves to a private, loopback,
link-local or otherwise non-public address is refused unless the config allows it (no server-side request
forgery into the gateway's network). The host is resolved once and the connection goes to the address that
was checked (a second lookup by the HTTP client would let DNS rebinding swap in 127.0.0.1); addresses that
embed another one (NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, IPv4-mapped) are judged by what they embed or
refused. Redirects are followed by hand so every hop is checked. Bodies are capped at ``max_bytes``, pixels
at ``max_pixels`` (decompression bombs), and must be an image type that Pillow decodes; decoding runs off the
event loop. Every refusal is a 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from typing import cast
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.core.errors import InvalidRequestError

ALLOWED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp"})


class ImagePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="largest image accepted")
    allow_private_hosts: bool = Field(default=False, description="allow URLs resolving to non-public addresses")
    max_pixels: int = Field(default=40_000_000, ge=1, description="largest width x height decoded")
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    max_redirects: int = Field(default=3, ge=0)


def _refuse(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="messages", code="invalid_image_url")


def _decode(data: bytes, content_type: str, policy: ImagePolicy, where: str):  # type: ignore[no-untyped-def]
    import warnings

    from PIL import Image, UnidentifiedImageError

    if content_type.split(";")[0].strip().lower() not in ALLOWED_TYPES:
        raise _refuse(f"{where}: content type '{content_type}' is not an image type the gateway reads "
                      f"({', '.join(sorted(ALLOWED_TYPES))})")
    if len(data) > policy.max_bytes:
        raise _refuse(f"{where}: the image is {len(data)} bytes; the limit is {policy.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # read from the header, before any pixel is decoded
            if width * height > policy.max_pixels:
                raise _refuse(f"{where}: the image is {width}x{height} pixels; the limit is {policy.max_pixels}")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _refuse(f"{where}: the image expands to too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _refuse(f"{where}: the data is not a readable image ({exc})") from None
    return image.convert("RGB")


def _from_data_url(url: str, policy: ImagePolicy) -> tuple[bytes, str]:
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise _refuse("a data: image URL must be of the form data:image/<type>;base64,<data>")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise _refuse(f"data: URL: the image is larger than the limit of {policy.max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True), header[: -len(";base64")]
    except (binascii.Error, ValueError):
        raise _refuse("data: URL: the payload is not valid base64") from None


# Ranges whose addresses are "global" to Python 3.11's ipaddress but reach somewhere else: NAT64 (the
# well-known and the local-use prefixes) and 6to4 embed an IPv4 address a gateway would forward to; Teredo
# tunnels. Refused outright unless private hosts are allowed.
_TUNNEL_RANGES = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16",
                                                          "2001::/32"))


def check_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is not a public address the gateway may fetch from (None when it is)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return check_address(address.ipv4_mapped)
    if any(address in network for network in _TUNNEL_RANGES):
        return f"the tunnelled (NAT64 / 6to4 / Teredo) address {address}"
    if not address.is_global or address.is_multicast:
        return f"the non-public address {address}"
    return None


async def _resolve(host: str, port: int, policy: ImagePolicy) -> str:
    """One address of ``host`` that may be connected to: every address it resolves to must pass the check,
    and the fetch connects to the first (no second lookup)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise _refuse(f"image URL host '{host}' does not resolve") from None
    # An AF_INET/AF_INET6 sockaddr starts with the host string (typeshed's union also covers other families).
    addresses = [ipaddress.ip_address(cast(str, info[4][0]).split("%")[0]) for info in infos]
    if not policy.allow_private_hosts:
        for address in addresses:
            reason = check_address(address)
            if reason is not None:
                raise _refuse(f"image URL host '{host}' resolves to {reason}; the gateway does not fetch from "
                              "private, loopback, link-local or tunnelled networks")
    return str(addresses[0])


def _pinned(url: str, parts: SplitResult, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL with its host replaced by the checked address, and the Host header and TLS server name that
    keep the request what it was (virtual hosting and certificate checks still use the name)."""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": parts.hostname or ""} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"host": host_header}, extensions


async def load_image(url: str, policy: ImagePolicy):  # type: ignore[no-untyped-def]
    """The RGB ``PIL.Image`` behind an ``image_url``, or a 400 saying why it cannot be read."""
    if url.startswith("data:"):
        data, content_type = _from_data_url(url, policy)
        return await asyncio.to_thread(_decode, data, content_type, policy, "data: URL")
    data, content_type = await _fetch(url, policy)
    return await asyncio.to_thread(_decode, data, content_type, policy, "image URL")


async def _fetch(url: str, policy: ImagePolicy) -> tuple[bytes, str]:
    for _ in range(policy.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refuse(f"image URL '{url[:100]}' is neither a data: URL nor an http(s) URL")
        address = await _resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), policy)
        target, headers, extensions = _pinned(url, parts, address)
        async with httpx.AsyncClient(timeout=policy.fetch_timeout_s, follow_redirects=False, trust_env=False) as client:
            try:
                request = client.build_request("GET", target, headers=headers, extensions=extensions)
                response = await client.send(request, stream=True)
                try:
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
                    return bytes(body), response.headers.get("content-type", "")
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                raise _refuse(f"image URL could not be fetched: {type(exc).__name__}") from None
    raise _refuse(f"image URL redirected more than {policy.max_redirects} times")
