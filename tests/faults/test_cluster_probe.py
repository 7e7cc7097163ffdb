"""Issue 18 item 10: `--cluster ADDRESS --cluster-timeout T` gives up after about T seconds even when
something at ADDRESS accepts TCP connections but never speaks (not a Dask scheduler): one `error:`
line, exit 2, nothing written, for `tokenize` and `shard` alike. The silent server is a socket on
127.0.0.1 in this process."""

from __future__ import annotations

import socket
import threading

import pytest

from faultkit import PLAIN, bertprep, data_files

pytest.importorskip("distributed")


@pytest.fixture
def silent_server():
    """A loopback TCP server that accepts every connection and never sends a byte; it stops, and
    closes what it accepted, when the test ends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    accepted = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:  # the 0.2 s accept timeout: look at `stop` again
                continue
            accepted.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for conn in accepted:
        conn.close()
    srv.close()


@pytest.mark.parametrize("command", ["tokenize", "shard"])
def test_a_server_that_accepts_and_never_answers_times_out(command, silent_server, token_store, tmp_path):
    out = tmp_path / "out"
    args = (["tokenize", PLAIN, "--vocab-size", "600"] if command == "tokenize"
            else ["shard", "--tokens", token_store, "--max-len", "64"])
    # finish() kills the process after `timeout` and fails the test as a hang.
    run = bertprep(*args, "--out", out, "--cluster", silent_server, "--cluster-timeout", "2", timeout=60)
    line = run.one_error_line()
    assert silent_server in line and "Dask scheduler" in line, line
    assert data_files(out) == {}
