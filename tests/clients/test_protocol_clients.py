"""The real ratewarden binary driven by well-known third-party protocol clients, the way
users' programs and dashboards talk to it: Python's `websockets` (RFC 6455), `httpx` with
`httpx-sse` (Server-Sent Events), and `http-sf`, an RFC 9651 structured-field parser, for
the rate-limit headers. ratewarden's own tests use actix's client; these catch the places
where other clients expect something else.

Run by scripts/test inside its venv (target/venv-clients); RATEWARDEN_BIN names the binary.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import http_sf
import httpx
import pytest
from httpx_sse import connect_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("RATEWARDEN_BIN", os.path.join(ROOT, "target", "debug", "ratewarden"))

# Long enough that a connection ended by the server's timers instead of the protocol
# cannot pass for one ended at once.
CLIENT_TIMEOUT_MS = 60_000


class Server:
    """One ratewarden process on a free loopback port, with its own SQLite file."""

    def __init__(self, *args, db=None):
        self.dir = tempfile.mkdtemp(prefix="rw-clients-")
        self.db = db or os.path.join(self.dir, "rw.db")
        self.proc = subprocess.Popen(
            [BIN, "--bind", "127.0.0.1:0", "--database", self.db, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "info,actix_server=warn"},
        )
        self.log = []
        listening = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                if "listening on http://" in line:
                    self.addr = re.search(r"http://(\S+)", line).group(1)
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        assert listening.wait(20), f"the server did not start: {self.log}"
        self.url = f"http://{self.addr}"
        self.ws_url = f"ws://{self.addr}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def request(self, method, path, **kw):
        return self.http.request(method, path, **kw)

    def create_config(self, **config):
        r = self.request("POST", "/admin/configs", json=config)
        assert r.status_code == 201, r.text

    def sse_subscribers(self):
        """`ratewarden_feed_subscribers{transport="sse"}` from /metrics."""
        text = self.request("GET", "/metrics").text
        m = re.search(r'^ratewarden_feed_subscribers\{transport="sse"\} (\d+)', text, re.M)
        assert m, text
        return int(m.group(1))

    def stop(self):
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


@pytest.fixture(scope="module")
def server():
    s = Server("--client-timeout-ms", str(CLIENT_TIMEOUT_MS), "--max-subscribers-per-ip", "2")
    yield s
    s.stop()


def until(condition, within):
    """Whether `condition()` holds at some check before `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# 1. WebSocket: after the closing handshake the server closes the TCP connection at once
# (RFC 6455 §5.5.1, §7.1.1).


@pytest.mark.parametrize("feed", ["/ws/global", "/ws/alice"])
def test_a_websocket_closed_by_the_client_is_closed_by_the_server_at_once(server, feed):
    async def run():
        # The client waits up to close_timeout for the server to close TCP, then gives up
        # and closes it itself: far longer than the bound below, as is the server's own
        # client timeout, so only a server that closes by itself passes.
        async with connect(server.ws_url + feed, subprotocols=["ratewarden"], close_timeout=30) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] in ("global_stats", "client_stats"), first
            started = time.monotonic()
            await ws.close(1000)
            closed_in = time.monotonic() - started
            assert ws.close_code == 1000 and ws.close_reason == "", (ws.close_code, ws.close_reason)
            # websockets only returns from close() once the TCP connection is gone.
            assert ws.transport.is_closing()
        return closed_in

    closed_in = asyncio.run(run())
    assert closed_in < 5, f"the TCP connection was closed after {closed_in:.1f} s, not by the server at once"


# 2. SSE: a closed stream frees its subscriber slot within 2 s, even on an idle feed.


def test_sse_reconnects_to_an_idle_client_feed_never_run_out_of_slots(server):
    # The per-IP cap is 2: a slot kept by any one of these closed streams would turn the
    # third connect into a 429, as EventSource's reconnect loop would meet it.
    for i in range(8):
        with httpx.Client(base_url=server.url, timeout=10) as client:
            with connect_sse(client, "GET", "/events/idle-client") as events:
                assert events.response.status_code == 200, f"connect {i}: {events.response.read()}"
                first = next(events.iter_sse())
                assert first.event == "client_stats", first
                assert json.loads(first.data)["client_id"] == "idle-client"
    assert until(lambda: server.sse_subscribers() == 0, within=2), (
        f"{server.sse_subscribers()} SSE subscribers still counted 2 s after the last closed"
    )


def test_an_sse_stream_abandoned_mid_read_frees_its_slot(server):
    client = httpx.Client(base_url=server.url, timeout=10)
    opened = contextlib.ExitStack()
    # The readers are kept: closing one (as its garbage collection would) closes its stream.
    readers = [opened.enter_context(connect_sse(client, "GET", f"/events/c{i}")).iter_sse()
               for i in range(2)]
    for events in readers:
        assert next(events).event == "client_stats"
    assert server.sse_subscribers() == 2
    # Both slots of this IP are taken: a third is refused, with the usual JSON error.
    third = server.request("GET", "/events/c3")
    assert third.status_code == 429 and third.json()["error"] == "too_many_subscribers"
    client.close()  # drops both connections without reading on
    opened.close()
    assert until(lambda: server.sse_subscribers() == 0, within=2)
    with httpx.Client(base_url=server.url, timeout=10) as again:
        with connect_sse(again, "GET", "/events/c3") as events:
            assert events.response.status_code == 200


# 3. The rate-limit headers parse as RFC 9651 structured fields, and on a 429 `t` names
# the same point in time as Retry-After.

# The fixed window is an hour long so that six requests almost never straddle the edge of
# a window (which is aligned to the epoch).
ALGORITHMS = {
    "sliding_window": {"requests_per_window": 3, "window_seconds": 60},
    "fixed_window": {"requests_per_window": 3, "window_seconds": 3600},
    "token_bucket": {"requests_per_window": 3, "window_seconds": 60, "burst_limit": 3},
}


def parse_headers(r):
    (name, policy), = http_sf.parse(r.headers["RateLimit-Policy"].encode(), tltype="list")
    (name2, limit), = http_sf.parse(r.headers["RateLimit"].encode(), tltype="list")
    assert name == name2
    return name, policy, limit


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rate_limit_headers_are_structured_fields_and_t_is_retry_after_on_a_429(server, algorithm):
    endpoint = f"/headers/{algorithm}"
    server.create_config(endpoint=endpoint, algorithm=algorithm, **ALGORITHMS[algorithm])
    seen = []
    for n in range(6):
        r = server.request("GET", endpoint, headers={"X-Client-ID": f"h-{algorithm}"})
        name, policy, limit = parse_headers(r)
        assert name == endpoint
        assert policy == {"q": 3, "w": ALGORITHMS[algorithm]["window_seconds"]}
        assert set(limit) == {"r", "t"} and all(type(v) is int and v >= 0 for v in limit.values())
        assert limit["r"] == int(r.headers["X-RateLimit-Remaining"])
        assert int(r.headers["X-RateLimit-Limit"]) == 3
        if n < 3:
            assert r.status_code == 404, r.text  # allowed: no route serves this path
            assert limit["r"] == 2 - n and "Retry-After" not in r.headers
        else:
            assert r.status_code == 429, r.text
            retry_after = int(r.headers["Retry-After"])
            assert retry_after >= 1 and limit["r"] == 0
            assert limit["t"] == retry_after, (algorithm, r.headers)
            assert r.json()["retry_after"] == retry_after
        seen.append(limit["t"])
    if algorithm == "token_bucket":
        # One token every 20 s: with quota left, `t` is the time to refill the bucket
        # (20 s, then 40 s); with none left, the time to the next token.
        assert seen == [20, 40, 20, 20, 20, 20], seen
    elif algorithm == "sliding_window":
        # Six requests a few milliseconds apart: the whole quota, and the next request,
        # come back when they leave the 60 s window (admissions count from the next
        # millisecond, so a whole quota may be 60.001 s away: 61).
        assert all(59 <= t <= 61 for t in seen), seen
    else:
        # Everything comes back at the end of the window, whatever is left.
        assert max(seen) - min(seen) <= 1 and 1 <= min(seen) <= 3600, seen


# 4. SIGTERM ends every feed at once (WebSocket Close 1001, SSE end of stream), then
# flushes and exits.


def test_sigterm_ends_the_feeds_then_flushes_and_exits_at_once():
    # Snapshots are written only at the final flush: the periodic one is a minute away.
    s = Server("--client-timeout-ms", str(CLIENT_TIMEOUT_MS), "--flush-interval-ms", "60000")
    s.create_config(endpoint="/api/data", requests_per_window=5, window_seconds=3600,
                    algorithm="fixed_window")
    for _ in range(3):
        assert s.request("GET", "/api/data", headers={"X-Client-ID": "flushed"}).status_code == 200

    ended = {}

    def sse():
        # An idle client feed that is read and never closed by its client.
        with httpx.Client(base_url=s.url, timeout=30) as client:
            with connect_sse(client, "GET", "/events/idle") as events:
                got = [e.event for e in events.iter_sse()]
        ended["sse"] = got

    reader = threading.Thread(target=sse, daemon=True)
    reader.start()

    async def run():
        async with connect(s.ws_url + "/ws/global", subprotocols=["ratewarden"], close_timeout=30) as ws:
            await ws.recv()
            assert until(lambda: s.sse_subscribers() == 1, within=5)
            started = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    await ws.recv()
            except ConnectionClosedOK:
                pass
            ended["ws"] = (ws.close_code, time.monotonic() - started)
            await asyncio.get_running_loop().run_in_executor(None, s.proc.wait, 20)
            ended["exit"] = time.monotonic() - started

    asyncio.run(run())
    reader.join(5)
    s.http.close()
    assert s.proc.returncode == 0, s.log
    assert ended["ws"][0] == 1001, ended
    assert ended.get("sse") == ["client_stats"], ended
    assert ended["exit"] < 1, f"exited {ended['exit']:.2f} s after SIGTERM: {s.log}"
    assert any("live feeds ended" in line for line in s.log), s.log
    assert any("client snapshots written" in line for line in s.log), s.log

    # Everything was flushed: the consumption made before the stop still counts.
    again = Server(db=s.db)
    try:
        r = again.request("GET", "/api/data", headers={"X-Client-ID": "flushed"})
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "1", r.headers
    finally:
        again.stop()
