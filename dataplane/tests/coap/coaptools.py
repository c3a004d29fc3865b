"""CoAP clients written by others, driven from the tests: libcoap's ``coap-client-notls``
and ``coap-client-openssl`` (DTLS; both Debian libcoap3-bin) and aiocoap's asyncio API
(PyPI aiocoap).

    res = coap_client(uri, "-m", "post", "-e", "21")    # one request, -v 6 dumps parsed
    res.response.code                                    # "2.04"  (res.response.type "ACK")
    obs = CliObserver(uri, seconds=6).start()            # -s 6: observe, deregisters at the end
    res = coaps_client(coaps_uri, "-m", "post", "-e", "x", "-u", "dev1", "-k", "key")  # DTLS
    res.handshake_failed                                 # no response, a DTLS alert logged
    obs = CliObserver(coaps_uri, 6, "-u", "dev1", "-k", "key", client=COAPS_CLIENT)
    aio_request(uri, "POST", b"x", non=True).code.dotted # "2.04"
    obs = AioObserver(uri).start()                       # ctx.request(GET, observe=0) in a thread
    obs.payloads()                                       # notifications (not the first response)

``uri(port, path, **query)`` builds ``coap://127.0.0.1:PORT/...`` (``scheme="coaps"``:
``coaps://``) with each topic level percent-encoded (``#`` -> ``%23``; ``+`` stays).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass

HOST = "127.0.0.1"
COAP_CLIENT = "coap-client-notls"
COAPS_CLIENT = "coap-client-openssl"  # the same package, built with OpenSSL (DTLS)

# "v:1 t:ACK c:2.05 i:a606 {63616666} [ Observe:2, Max-Age:1 ] :: 'Nov 29 19:38:10'"
DUMP_RE = re.compile(r"^v:1 t:(CON|NON|ACK|RST) c:(\S+) i:([0-9a-f]+) \{([0-9a-f]*)\} "
                     r"\[ ?(.*?) ?\](?: :: '(.*)')?\s*$")


def have_coap_client() -> bool:
    return shutil.which(COAP_CLIENT) is not None


def have_coaps_client() -> bool:
    return shutil.which(COAPS_CLIENT) is not None


def uri(port: int, path: str, scheme: str = "coap", **query) -> str:
    """``coap://127.0.0.1:PORT/<path>?k=v&...`` (or ``scheme://``); each "/"-separated level
    of ``path`` is percent-encoded ("#" -> "%23"), "+" and "$" kept as they are."""
    levels = [urllib.parse.quote(level, safe="+$") for level in path.split("/")]
    out = f"{scheme}://{HOST}:{port}/{'/'.join(levels)}"
    if query:
        out += "?" + "&".join(f"{k}={urllib.parse.quote(str(v), safe='')}"
                              for k, v in query.items())
    return out


# ---------------------------------------------------------------------------
# libcoap coap-client
# ---------------------------------------------------------------------------


@dataclass
class Dump:
    """One message coap-client logged at -v 6 (what it sent and what it got)."""
    type: str       # CON NON ACK RST
    code: str       # "GET", "2.05", "0.00" ...
    mid: int
    token: str      # hex
    options: str    # "Observe:2, Max-Age:1"
    payload: str | None

    @property
    def is_response(self) -> bool:
        return bool(re.fullmatch(r"[2-5]\.\d\d", self.code))

    @property
    def observe(self) -> int | None:
        m = re.search(r"Observe:(\d+)", self.options)
        return int(m.group(1)) if m else None


def parse_dumps(lines) -> list[Dump]:
    out = []
    for line in lines:
        m = DUMP_RE.match(line.rstrip("\n"))
        if m:
            out.append(Dump(m.group(1), m.group(2), int(m.group(3), 16), m.group(4),
                            m.group(5), m.group(6)))
    return out


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str
    dumps: list[Dump]

    @property
    def responses(self) -> list[Dump]:
        return [d for d in self.dumps if d.is_response]

    @property
    def response(self) -> Dump:
        assert self.responses, f"coap-client got no response:\n{self}"
        return self.responses[0]

    @property
    def handshake_failed(self) -> bool:
        """coap-client-openssl: no response, and the DTLS handshake ended with an alert
        (libcoap logs "DTLS: ... alert ..."; the exit code is 0 all the same)."""
        return not self.responses and bool(re.search(r"DTLS: .*alert", self.stdout + self.stderr))

    def __str__(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def coap_client(target: str, *args: str, wait: int = 10, client: str = COAP_CLIENT
                ) -> CliResult:
    """One ``coap-client-notls -v 6 -B wait ARGS URI`` run (a GET unless ``-m``)."""
    cmd = [client, "-v", "6", "-B", str(wait), *args, target]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=wait + 20,
                         stdin=subprocess.DEVNULL)
    return CliResult(out.returncode, out.stdout, out.stderr, parse_dumps(out.stdout.splitlines()))


def coaps_client(target: str, *args: str, wait: int = 10) -> CliResult:
    """One ``coap-client-openssl -v 6 -B wait ARGS coaps://...`` run: ``-u IDENTITY -k KEY``
    for a pre-shared key, ``-c CERT -j KEY -C CA`` for a certificate (``-C`` alone: none)."""
    return coap_client(target, *args, wait=wait, client=COAPS_CLIENT)


class CliObserver:
    """``coap-client-notls -s SECONDS`` (``client=COAPS_CLIENT``: coap-client-openssl) in the
    background (line-buffered through stdbuf); at the end of the duration libcoap
    deregisters (GET Observe:1, same token) and exits."""

    def __init__(self, target: str, seconds: int, *args: str, client: str = COAP_CLIENT):
        prefix = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.cmd = prefix + [client, "-v", "6", "-w", "-B", str(seconds + 10),
                             "-s", str(seconds), *args, target]
        self.seconds = seconds
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        _LIVE.append(self)

    def start(self) -> "CliObserver":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def dumps(self) -> list[Dump]:
        with self.lock:
            return parse_dumps(list(self.lines))

    def first_response(self) -> Dump | None:
        return next((d for d in self.dumps() if d.is_response), None)

    def notifications(self) -> list[Dump]:
        """2.05 with Observe after the first response, a retransmission counted once."""
        resp = [d for d in self.dumps() if d.is_response and d.observe is not None]
        seen, out = set(), []
        for d in resp[1:]:
            if (d.type, d.mid) not in seen:
                seen.add((d.type, d.mid))
                out.append(d)
        return out

    def payloads(self) -> list[bytes]:
        return [(d.payload or "").encode() for d in self.notifications()]

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# ---------------------------------------------------------------------------
# aiocoap
# ---------------------------------------------------------------------------


def _aiocoap():
    import aiocoap  # PyPI aiocoap (scripts/install-test-deps.sh)
    return aiocoap


def _tuning(non: bool):
    """NON (``Unreliable``) or CON (``Reliable``): aiocoap's way to choose the type."""
    aiocoap = _aiocoap()
    return aiocoap.Unreliable if non else aiocoap.Reliable


def aio_request(target: str, method: str = "GET", payload: bytes = b"", non: bool = False,
                timeout: float = 10.0):
    """One aiocoap request in a fresh client context; returns the response Message
    (``.code.dotted`` "2.04", ``.payload``, ``.opt``)."""
    aiocoap = _aiocoap()

    async def run():
        ctx = await aiocoap.Context.create_client_context()
        try:
            msg = aiocoap.Message(code=getattr(aiocoap, method), uri=target, payload=payload,
                                  transport_tuning=_tuning(non))
            return await asyncio.wait_for(ctx.request(msg).response, timeout)
        finally:
            await ctx.shutdown()

    return asyncio.run(run())


class AioObserver:
    """An aiocoap observation (``Message(code=GET, uri=..., observe=0)`` then ``async for
    r in request.observation``) on its own event loop in a thread, so that tests stay
    synchronous. ``.first`` is the registration's response."""

    def __init__(self, target: str, non: bool = False, timeout: float = 10.0):
        self.target, self.non, self.timeout = target, non, timeout
        self.first = None
        self.error: BaseException | None = None
        self.notes: list = []
        self.lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        _LIVE.append(self)

    async def _main(self) -> None:
        aiocoap = _aiocoap()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        ctx = await aiocoap.Context.create_client_context()
        try:
            req = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=self.target, observe=0,
                                              transport_tuning=_tuning(self.non)))
            self.first = await asyncio.wait_for(req.response, self.timeout)
            self._ready.set()
            if self.first.code.is_successful() and self.first.opt.observe is not None:
                async for note in req.observation:
                    with self.lock:
                        self.notes.append(note)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # reported through .error
            self.error = e
        finally:
            self._ready.set()
            try:
                await asyncio.wait_for(ctx.shutdown(), 5)
            except Exception:
                pass

    def start(self) -> "AioObserver":
        self._thread.start()
        assert self._ready.wait(self.timeout + 5), f"aiocoap observe {self.target}: no answer"
        assert self.first is not None, f"aiocoap observe {self.target} failed: {self.error!r}"
        return self

    @property
    def code(self) -> str:
        return self.first.code.dotted

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [bytes(n.payload) for n in self.notes]

    def all_payloads(self) -> list[bytes]:
        """The registration response's payload (when not empty), then the notifications."""
        head = [bytes(self.first.payload)] if self.first is not None and self.first.payload else []
        return head + self.payloads()

    def observe_values(self) -> list[int]:
        with self.lock:
            return [n.opt.observe for n in self.notes]

    def close(self) -> None:
        if self._loop is not None and self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread.ident is not None:
            self._thread.join(10)


_LIVE: list = []


def close_all() -> None:
    while _LIVE:
        try:
            _LIVE.pop().close()
        except Exception:
            pass


def wait_for(predicate, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
