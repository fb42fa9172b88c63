"""The server's guard, in front of every route: the Host header must name this server (no DNS
rebinding), and with a token every request must carry it (``Authorization: Bearer``, or the cookie a
one-time ``?token=`` page link sets). A plain ASGI middleware: it costs microseconds per request.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from typing import Iterable, Optional
from urllib.parse import parse_qsl, urlencode

COOKIE = "imgfeat_token"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> set[str]:
    """Names a request's Host header may carry: loopback names, the bound address, and for a
    non-loopback bind this machine's name and addresses."""
    names = set(LOOPBACK_NAMES) | {h.lower() for h in extra}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host.lower())
    if not is_loopback(host):
        hostname = socket.gethostname()
        names |= {hostname.lower(), socket.getfqdn().lower()}
        try:
            names |= set(socket.gethostbyname_ex(hostname)[2])
        except OSError:
            pass
    return names


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8765
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _json(send, status: int, body: dict, headers: Optional[list] = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": data})


class Guard:
    def __init__(self, app, hosts: set[str], token: Optional[str] = None) -> None:
        self.app, self.hosts, self.token = app, hosts, token

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip(), self.token):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value, self.token):
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts:
            return await _json(send, 400, {"error": f"this server does not answer to the host name {host!r} "
                                                    "(a DNS-rebinding guard); use its own address or --allow-host"})
        if self.token is None or self._authorised(headers):
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = query.pop("token", None)
        if scope["method"] == "GET" and given is not None and hmac.compare_digest(given, self.token):
            # a one-time page link: keep the token in a cookie and drop it from the address bar
            location = scope["path"] + ("?" + urlencode(query) if query else "")
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()),
                                    (b"content-length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        return await _json(send, 401, {"error": "this server needs its token: Authorization: Bearer TOKEN, "
                                                "or open the link with ?token= that imgfeat serve printed"},
                           [(b"www-authenticate", b"Bearer")])
