"""A ``map_batches`` worker process: ``python -m weir._worker``, started by a step instance of a
job, which speaks to it over stdin/stdout in frames (a tag byte, a little-endian u64 length, the
payload). Batches are Arrow IPC streams. The worker ends when its stdin closes (the job ended,
however it ended). What the user's code prints goes to stderr."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import traceback


def _read(f, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv(f):
    head = _read(f, 9)
    if head is None:
        return None, None
    tag, n = head[0:1], struct.unpack("<Q", head[1:])[0]
    payload = _read(f, n) if n else b""
    if payload is None:
        return None, None
    return tag, payload


def _send(f, tag, payload=b""):
    f.write(tag + struct.pack("<Q", len(payload)))
    if payload:
        f.write(payload)
    f.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group: the job stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    tag, payload = _recv(inp)
    if tag != b"I":
        return
    try:
        path, inner = pickle.loads(payload)
        for p in reversed(path):
            if p not in sys.path:
                sys.path.insert(0, p)
        fn = pickle.loads(inner)
        import pyarrow as pa

        from weir._udf import Adapter

        adapter = Adapter(fn)
    except Exception:
        _send(out, b"X", traceback.format_exc().encode())
        return
    _send(out, b"O")
    while True:
        tag, payload = _recv(inp)
        if tag is None or tag == b"Q":
            return
        try:
            if tag == b"B":
                batch = pa.ipc.open_stream(payload).read_next_batch()
                ok, value = adapter.call(batch)
                if ok:
                    sink = pa.BufferOutputStream()
                    with pa.ipc.new_stream(sink, value.schema) as w:
                        w.write_batch(value)
                    _send(out, b"B", sink.getvalue().to_pybytes())
                else:
                    _send(out, b"E", value.encode())
            elif tag == b"S":
                state = adapter.snapshot()
                if state is None:
                    _send(out, b"N")
                else:
                    _send(out, b"S", state)
            elif tag == b"R":
                adapter.restore(payload)
                _send(out, b"O")
        except Exception:
            _send(out, b"X", traceback.format_exc().encode())


if __name__ == "__main__":
    main()
