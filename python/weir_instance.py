#!/usr/bin/env python3
"""A weir model instance in Python: a pyarrow.flight server running an ONNX model with Python
onnxruntime, speaking the same wire format as `weir serve-model`, so that it can be an instance
of a weir inference service (`placement: process` with `command:` naming this script).

    python weir_instance.py --model M.onnx [--cpus 1] [--port 0] [--grace 10s] [--exit-with-parent]

Contract with weir (see crates/weir-serve/src/flight.rs, "weir tensors v1"):

- Load the model, run one warm-up batch (one row of zeros), then print exactly
  `listening on 127.0.0.1:PORT` on stdout (and flush): weir routes requests to the instance only
  after that line.
- Serve `DoExchange` on 127.0.0.1 only. A request is a stream of record batches with the schema
  {name: utf8, dtype: utf8, shape: utf8, data: binary}: one row per chunk (at most 1 MiB) of a
  tensor's little-endian elements, a tensor's chunks in order; `dtype` is f32, f64, i8, i16,
  i32, i64, u8, u16, u32 or u64; `shape` the dimensions joined by commas, the batch first. The
  answer is the model's outputs in the same format.
- Errors: a request that does not fit the model is INVALID_ARGUMENT (weir fails those rows
  without retrying); a model failure is INTERNAL (weir retries it); while shutting down, new
  requests get UNAVAILABLE (weir sends them to another instance).
- With `--exit-with-parent` (weir passes it), stdin is a pipe held by the job: its end (the job
  ended, even by `kill -9`) counts as SIGTERM.
- SIGTERM or SIGINT: refuse new requests, finish the ones in flight for at most `--grace`, then
  exit; requests still running then are handed back (the connection closes, weir re-dispatches).

Set up its environment with scripts/setup-python-instance.sh (pyarrow, numpy, onnxruntime).
"""

import argparse
import os
import re
import signal
import sys
import threading

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight

CHUNK = 1 << 20
DTYPES = {
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
}
NAMES = {np.dtype(t): n for n, t in DTYPES.items()}
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
}
SCHEMA = pa.schema(
    [
        pa.field("name", pa.utf8(), nullable=False),
        pa.field("dtype", pa.utf8(), nullable=False),
        pa.field("shape", pa.utf8(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
)


def decode(table):
    """Chunk rows -> {name: ndarray}, in order of first appearance."""
    if table.schema.names[:4] != ["name", "dtype", "shape", "data"]:
        raise pa.ArrowInvalid(
            "not a weir tensors batch: expected columns name, dtype, shape, data"
        )
    parts = {}
    for name, dtype, shape, data in zip(*(table.column(i).to_pylist() for i in range(4))):
        if name not in parts:
            parts[name] = (dtype, shape, [])
        parts[name][2].append(data)
    out = {}
    for name, (dtype, shape, chunks) in parts.items():
        if dtype not in DTYPES:
            raise pa.ArrowInvalid(f"tensor '{name}': unknown dtype '{dtype}'")
        dims = [int(d) for d in shape.split(",")] if shape else []
        arr = np.frombuffer(b"".join(chunks), dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"))
        if arr.size != int(np.prod(dims, dtype=np.int64)):
            raise pa.ArrowInvalid(
                f"tensor '{name}': shape {dims} of {dtype} needs "
                f"{int(np.prod(dims)) * arr.itemsize} bytes but {arr.nbytes} came"
            )
        out[name] = arr.reshape(dims)
    return out


def encode(tensors):
    """{name: ndarray} -> one table of chunk rows."""
    cols = ([], [], [], [])
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = NAMES.get(arr.dtype)
        if dtype is None:
            raise flight.FlightInternalError(f"output '{name}': unsupported type {arr.dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        pieces = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)] or [b""]
        for p in pieces:
            cols[0].append(name)
            cols[1].append(dtype)
            cols[2].append(",".join(str(d) for d in arr.shape))
            cols[3].append(p)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA)], schema=SCHEMA)


class Instance(flight.FlightServerBase):
    def __init__(self, location, session):
        super().__init__(location)
        self.session = session
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]
        self.lock = threading.Condition()
        self.in_flight = 0
        self.draining = False

    def do_exchange(self, context, descriptor, reader, writer):
        with self.lock:
            if self.draining:
                raise flight.FlightUnavailableError("the instance is shutting down")
            self.in_flight += 1
        try:
            inputs = decode(reader.read_all())
            for name, arr in inputs.items():
                spec = self.inputs.get(name)
                if spec is None:
                    raise pa.ArrowInvalid(f"the model has no input '{name}'")
                want = ORT_TYPES.get(spec.type)
                if want is not None and arr.dtype != np.dtype(want):
                    raise pa.ArrowInvalid(f"input '{name}' is {arr.dtype}, the model wants {spec.type}")
            try:
                results = self.session.run(self.outputs, inputs)
            except Exception as e:  # noqa: BLE001 - any model failure is the instance's
                raise flight.FlightInternalError(f"model failed: {e}")
            table = encode(dict(zip(self.outputs, results)))
            writer.begin(table.schema)
            # Two chunk rows (<= 2 MiB) per message keeps every message under gRPC's limits.
            writer.write_table(table, max_chunksize=2)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.lock.notify_all()


def warmup_inputs(session):
    out = {}
    for i in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        out[i.name] = np.zeros(dims, dtype=ORT_TYPES.get(i.type, np.float32))
    return out


def parse_duration(s):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {s!r} (e.g. 10s, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--grace", type=parse_duration, default=10.0)
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down when stdin closes (weir holds the pipe: the instance ends with the job)",
    )
    a = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.cpus
    opts.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider"] if a.gpus > 0 else ["CPUExecutionProvider"]
    session = ort.InferenceSession(a.model, sess_options=opts, providers=providers)
    session.run(None, warmup_inputs(session))

    server = Instance(f"grpc://127.0.0.1:{a.port}", session)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if a.exit_with_parent:

        def watch_parent():
            while sys.stdin.buffer.read(65536):
                pass
            stop.set()

        threading.Thread(target=watch_parent, daemon=True).start()
    while not stop.wait(0.1):
        pass
    with server.lock:
        server.draining = True
        n = server.in_flight
        print(
            f"python instance: shutting down, {n} requests in flight, grace {a.grace}s",
            file=sys.stderr,
            flush=True,
        )
        server.lock.wait_for(lambda: server.in_flight == 0, timeout=a.grace)
        left = server.in_flight
    print(f"python instance: stopped ({left} requests handed back)", file=sys.stderr, flush=True)
    if left:
        # Hand the rest back: the connections close and weir sends the requests elsewhere.
        os._exit(0)
    server.shutdown()


if __name__ == "__main__":
    main()
