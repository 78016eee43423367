"""HTTP from the checks: one request as a shell command on the host (curl, else python3) or
inside a container (its python3, when the service publishes no port), and its answer read back."""

from __future__ import annotations

import json
import shlex
from typing import Any

from tasks.checks.runner import NotYet, Session

_PY_HTTP = (
    "import sys, urllib.request, urllib.error\n"
    "m, url, t, body, ctype = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]\n"
    "data = body.encode() if m in ('POST', 'PUT') else None\n"
    "req = urllib.request.Request(url, data=data, method=m, headers={'Content-Type': ctype})\n"
    "try:\n"
    "    r = urllib.request.urlopen(req, timeout=t); code, text = r.status, r.read(8000)\n"
    "except urllib.error.HTTPError as e:\n"
    "    code, text = e.code, e.read(8000)\n"
    "sys.stdout.write(text.decode(errors='replace') + '\\nHTTP %d\\n' % code)\n"
)


def http_command(
    method: str,
    url: str,
    timeout: int,
    body: str = "",
    content_type: str = "application/json",
    container: str | None = None,
) -> str:
    """A shell command doing one HTTP request and printing the body, then ``HTTP <code>``.
    On the host: curl, else python3. In a container (no published port): its python3."""
    py_args = [method, url, str(timeout), body, content_type]
    python = "python3 -c " + shlex.quote(_PY_HTTP) + " " + " ".join(shlex.quote(a) for a in py_args)
    if container:
        return f"docker exec {shlex.quote(container)} {python}"
    curl = ["curl", "-sS", "-m", str(timeout), "-w", r"\nHTTP %{http_code}\n"]
    if method == "HEAD":
        curl += ["-I"]
    else:
        curl += ["-X", method]
    if method in ("POST", "PUT"):
        curl += ["-H", f"Content-Type: {content_type}", "--data-binary", body]
    curl.append(url)
    return (
        f"if command -v curl >/dev/null 2>&1; then {shlex.join(curl)}; "
        f"elif command -v python3 >/dev/null 2>&1; then {python}; "
        "else echo 'neither curl nor python3 on this host' >&2; exit 127; fi"
    )


def parse_http(ok: bool, output: str, timeout: int) -> tuple[int, str]:
    """(status, body) from :func:`http_command` output; raises NotYet naming why there was no
    answer (refused, timed out ...)."""
    lines = output.rstrip("\n").splitlines()
    code = 0
    if lines and lines[-1].startswith("HTTP "):
        try:
            code = int(lines[-1][5:].strip())
        except ValueError:
            code = 0
        lines = lines[:-1]
    if code == 0:
        tail = [line.strip() for line in lines if line.strip()]
        if ok is False and not tail:
            raise NotYet(f"no answer within {timeout}s (timed out)")
        reason = tail[-1] if tail else "no answer"
        if "timed out" in reason.lower() or "timeout" in reason.lower():
            reason = f"no answer within {timeout}s ({reason[:160]})"
        raise NotYet(reason[:240])
    return code, "\n".join(lines).strip()


def error_text(body: str, limit: int = 300) -> str:
    """What an error answer says: a JSON body's error/detail/message field, else the body."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "detail", "message", "error_code"):
            if data.get(key):
                return " ".join(str(data[key]).split())[:limit]
    return " ".join(body.split())[:limit]


def where(service: Any) -> str:
    """How a service is reached, for the report: its url, else its container."""
    return service.url or service.container or "?"


def request(
    session: Session,
    service: Any,
    method: str,
    path: str,
    body: str = "",
    content_type: str = "application/json",
) -> tuple[int, str, str]:
    """(status, body, what was asked) of one request to ``service`` (``url``, else inside its
    ``container`` on ``container_port``)."""
    if service.url:
        url, inside = service.url.rstrip("/") + path, None
    else:
        url, inside = f"http://127.0.0.1:{service.container_port}{path}", service.container
    command = http_command(method, url, session.http_timeout, body, content_type, inside)
    ok, out = session.sh(command, session.http_timeout + 3)
    code, text = parse_http(ok, out, session.http_timeout)
    return code, text, f"{method} {url if not inside else path + ' (in ' + inside + ')'}"


def http_probe(
    session: Session,
    service: Any,
    path: str,
    expect: str | None = None,
    method: str = "GET",
    accept: tuple[int, ...] = (200,),
):
    """A probe: ``path`` answers with an accepted status (and ``expect`` in the body)."""

    def probe():
        code, body, what = request(session, service, method, path)
        flat = " ".join(body.split())
        if code not in accept:
            raise NotYet(f"{what} -> HTTP {code}: {error_text(body)}")
        if expect and expect not in body:
            raise NotYet(f"{what} -> {code} but the body lacks {expect!r}: {flat[:120]}")
        return f"{what} -> {code} {flat[:60]}".strip()

    return probe
