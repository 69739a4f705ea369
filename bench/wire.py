"""The everyday request at wire speed (issue 18): a cached `describe` of titanic from datagraph against a
bare Starlette app on uvicorn answering the same bytes, both driven by `wrk` (a C client, so the
client is not what is measured), one client and eight, interleaved, medians of 3.

Targets: p50 at most 2x the bare app's (one client); throughput at eight clients at least 0.5x.
Writes bench/results/wire.md. Run: `.venv/bin/python bench/wire.py` (`make bench` runs it after the journey).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _systems import ROOT, process, wrk, wrk_script

TITANIC = ROOT.parent / "shared" / "data" / "titanic.csv"
RESULTS = ROOT / "bench" / "results"
QUERY = '{ dataset(id: "titanic") { describe { success data meta { cached rowCount } } } }'
UPLOAD = "mutation($f: Upload!) { uploadDataset(file: $f) { success dataset { id } } }"
SECONDS = 5
ROUNDS = 3
BARE = """
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
import uvicorn

BODY = open(sys.argv[1], "rb").read()

async def graphql(request):
    await request.body()
    return Response(BODY, media_type="application/json")

async def healthz(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"]), Route("/healthz", healthz)])
port = int(sys.argv[sys.argv.index("--port") + 1])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="wire-") as tmp:
        work = Path(tmp)
        script = wrk_script(work / "post.lua", json.dumps({"query": QUERY}))
        # As in the journey: log level warning (no access line a request; the bare app writes none either).
        datagraph = [str(ROOT / ".venv/bin/datagraph"), "serve", "--data-dir", str(work / "data"), "--rate-limit", "",
                     "--workers", "1", "--sources", "", "--plugins", "", "--log-level", "warning"]  # fmt: skip
        with process(datagraph, {}, "/healthz", work / "datagraph.log") as (client, _):
            files = {"0": ("titanic.csv", TITANIC.read_bytes(), "text/csv")}
            data = {
                "operations": json.dumps({"query": UPLOAD, "variables": {"f": None}}),
                "map": '{"0": ["variables.f"]}',
            }
            upload = client.post("/graphql", data=data, files=files, headers={"Apollo-Require-Preflight": "true"})
            assert upload.json()["data"]["uploadDataset"]["success"], upload.text
            for _ in range(3):  # computed, then from the result cache, then from the answer cache
                answer = client.post("/graphql", json={"query": QUERY})
            body = work / "answer.json"
            body.write_bytes(answer.content)
            assert answer.json()["data"]["dataset"]["describe"]["meta"]["cached"] is True
            bare = [sys.executable, "-c", BARE, str(body)]
            with process(bare, {}, "/healthz", work / "bare.log") as (bare_client, _):
                urls = {"datagraph": str(client.base_url) + "/graphql", "bare": str(bare_client.base_url) + "/graphql"}
                runs: dict[tuple[str, int], list[dict[str, float]]] = {}
                for _ in range(ROUNDS):
                    for connections in (1, 8):
                        for name, url in urls.items():  # interleaved
                            runs.setdefault((name, connections), []).append(wrk(url, script, connections, SECONDS))
    report(runs, len(answer.content))


def report(runs: dict[tuple[str, int], list[dict[str, float]]], size: int) -> None:
    def med(name: str, c: int, what: str) -> float:
        return statistics.median(r[what] for r in runs[(name, c)])

    bad = sum(r["bad"] for rs in runs.values() for r in rs)
    p50_ratio = med("datagraph", 1, "p50_ms") / med("bare", 1, "p50_ms")
    rps8_ratio = med("datagraph", 8, "rps") / med("bare", 8, "rps")
    rows = [
        "| | datagraph | bare Starlette, same bytes | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| one client: p50 | {med('datagraph', 1, 'p50_ms'):.3f} ms | {med('bare', 1, 'p50_ms'):.3f} ms"
        f" | {p50_ratio:.2f}x | at most 2x: {'met' if p50_ratio <= 2 else 'MISSED'} |",
        f"| one client: req/s | {med('datagraph', 1, 'rps'):,.0f} | {med('bare', 1, 'rps'):,.0f}"
        f" | {med('datagraph', 1, 'rps') / med('bare', 1, 'rps'):.2f}x | |",
        f"| eight clients: req/s | {med('datagraph', 8, 'rps'):,.0f} | {med('bare', 8, 'rps'):,.0f}"
        f" | {rps8_ratio:.2f}x | at least 0.5x: {'met' if rps8_ratio >= 0.5 else 'MISSED'} |",
        f"| eight clients: p50 | {med('datagraph', 8, 'p50_ms'):.3f} ms | {med('bare', 8, 'p50_ms'):.3f} ms | | |",
    ]
    text = "\n".join(
        [
            "# The everyday request at wire speed (bench/wire.py)",
            "",
            f"A cached `describe` of titanic ({size:,} bytes), rate limit off, log level warning (as in the"
            f" journey), `wrk` for {SECONDS} s per run,"
            f" interleaved, medians of {ROUNDS}; non-2xx answers and socket errors seen: {bad}.",
            "",
            *rows,
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wire.md").write_text(text)
    print(text)
    if bad:
        sys.exit(f"{bad} requests were not answered 2xx: the figures are not valid")


if __name__ == "__main__":
    main()
