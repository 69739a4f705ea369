"""A worker process: runs one job at a time for the server, under a memory cap.

Started as `python -m engine._worker MEMORY_MB RESULT_BYTES [OTEL_ENDPOINT]` by `engine.Executor`. Jobs arrive
on stdin and answers leave on the original stdout, each framed as an 8-byte big-endian length and a pickle;
fd 1 is pointed at stderr so nothing a library prints can corrupt the stream. A job is
`(fn, args, kwargs, trace)` with `fn` a module-level function and `trace` the caller's trace context
(None when tracing is off); the answer is `("ok", value)`,
`("problem", exc)` for a `DatagraphError`, `("memory", None)` for a `MemoryError`, or
`("crash", traceback_text)`. An answer whose pickle is over RESULT_BYTES is replaced here by a
TOO_LARGE problem, so its bytes never reach the server process. The server kills this process when
a job overruns its deadline.
"""

from __future__ import annotations

import os
import pickle
import resource
import struct
import sys
import traceback
from typing import Any, BinaryIO

from datagraph import tracing

_HEADER = struct.Struct(">Q")


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _answer(job: Any) -> tuple[str, Any]:
    from datagraph.errors import DatagraphError
    from storage import storage_guard

    fn, args, kwargs, trace = job
    try:
        # A full disk is a problem to report (STORAGE_FULL), not a crash; the span continues the job's trace.
        with tracing.span("worker.job", _kind(fn), parent=trace), storage_guard():
            return "ok", fn(*args, **kwargs)
    except DatagraphError as exc:
        return "problem", exc
    except MemoryError:
        return "memory", None
    except Exception:
        return "crash", traceback.format_exc()
    except BaseException as exc:  # a Rust panic in Polars (pyo3's PanicException) is no Exception
        import polars as pl

        if not isinstance(exc, pl.exceptions.PanicException):
            raise
        from datagraph.errors import BadInput

        # That query's own bug, found in the engine: an answer, not a dead worker (and no panic text).
        return "problem", BadInput(
            "The data engine could not run this (it stopped on an internal error); try writing it differently,"
            " for example with other casts or arguments."
        )


def _kind(fn: Any) -> dict[str, tracing.AttributeValue]:
    return {"datagraph.job.kind": getattr(fn, "__qualname__", "job")}


_NICENESS = 10


def _too_large(result_bytes: int) -> bytes:
    from datagraph.errors import TooLarge

    mib = result_bytes / (1024 * 1024)
    problem = TooLarge(
        f"The answer is larger than {mib:g} MiB (setting max_result_mb); ask for fewer rows or columns,"
        " or filter or group first."
    )
    return pickle.dumps(("problem", problem), protocol=5)


def main(memory_mb: int, result_bytes: int = 0, otel_endpoint: str = "") -> None:
    # Below the server process: on a busy machine, answers from the cache, the event stream and
    # the API's own work come before long analyses (cached-read p99 under load, tests/test_load.py).
    os.nice(_NICENESS)
    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    import engine  # noqa: F401  (warm the imports before the first job)

    tracing.configure(otel_endpoint, exit_flush=True)

    out.write(_HEADER.pack(0))  # ready
    while True:
        header = _read_exactly(inp, _HEADER.size)
        if header is None:
            return
        body = _read_exactly(inp, _HEADER.unpack(header)[0])
        if body is None:
            return
        answer = _answer(pickle.loads(body))  # noqa: S301  (the server is the only writer)
        try:
            data = pickle.dumps(answer, protocol=5)
        except Exception:
            data = pickle.dumps(("crash", traceback.format_exc()), protocol=5)
        if result_bytes and len(data) > result_bytes:
            data = _too_large(result_bytes)
        out.write(_HEADER.pack(len(data)) + data)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:4])
