"""A load generator for tests/test_load.py, run as its own process so that its event loop does not
delay the latency probe: paced clients, each with its own API key, mixing cached reads, uncached
analysis and uploads for a fixed time, plus one greedy client that is meant to be rate limited
(and then waits as Retry-After says).

    python tests/loadgen.py BASE KEYS_FILE DATASET SECONDS  ->  JSON counts on stdout
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sys
import time

import httpx

CACHED = '{ dataset(id: "%s") { describe(columns: ["fare", "age"]) { success error { code } } } }'
FRESH = '{ dataset(id: "%s") { filter(where: {column: "fare", op: GT, value: %d}) { count(cache: BYPASS) { success error { code } } } } }'
UPLOAD = "mutation($f: Upload!) { uploadDataset(file: $f) { success error { code message } } }"
SMALL_CSV = "".join(f"{i},{i * 0.5},name{i % 7}\n" for i in range(2_000)).encode()


async def _one(client: httpx.AsyncClient, key: str, dataset: str, rng: random.Random) -> tuple[str, str]:
    """One request of the mix; (kind, outcome) where outcome is ok, RATE_LIMITED or the failure."""
    headers = {"X-API-Key": key}
    roll = rng.random()
    if roll < 0.05:
        kind = "upload"
        operations = json.dumps({"query": UPLOAD, "variables": {"f": None}})
        response = await client.post(
            "/graphql",
            data={"operations": operations, "map": json.dumps({"0": ["variables.f"]})},
            files={"0": ("load.csv", b"a,b,c\n" + SMALL_CSV, "text/csv")},
            headers=headers,
        )
    else:
        kind, query = ("fresh", FRESH % (dataset, rng.randrange(500))) if roll < 0.2 else ("cached", CACHED % dataset)
        response = await client.post("/graphql", json={"query": query}, headers=headers)
    if response.status_code == 429:
        await asyncio.sleep(float(response.headers["retry-after"]))  # as a client should
        return kind, "RATE_LIMITED"
    if response.status_code != 200:
        return kind, f"HTTP {response.status_code}"
    body = response.json()
    payload = next(iter(body.get("data", {}).values()), None) if body.get("data") else None
    text = json.dumps(payload)
    if "errors" in body or payload is None or '"success": false' in text:
        return kind, text[:200] if "errors" not in body else json.dumps(body["errors"])[:200]
    return kind, "ok"


async def _client(base: str, key: str, dataset: str, until: float, pace_s: float, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    seen: list[tuple[str, str]] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            seen.append(await _one(client, key, dataset, rng))
            await asyncio.sleep(max(0.0, pace_s - (time.monotonic() - started)) * rng.uniform(0.5, 1.5))
    return seen


async def main(base: str, keys: list[str], dataset: str, seconds: float) -> dict[str, object]:
    until = time.monotonic() + seconds
    greedy, paced = keys[0], keys[1:]
    tasks = [_client(base, key, dataset, until, 1.0, seed) for seed, key in enumerate(paced)]
    tasks.append(_client(base, greedy, dataset, until, 0.0, 999))  # no pause: spends its budget
    results = await asyncio.gather(*tasks)
    counts: dict[str, collections.Counter[str]] = {"paced": collections.Counter(), "greedy": collections.Counter()}
    for i, seen in enumerate(results):
        who = "greedy" if i == len(results) - 1 else "paced"
        counts[who].update(f"{kind}:{outcome}" for kind, outcome in seen)
    return {who: dict(c) for who, c in counts.items()}


if __name__ == "__main__":
    base, keys_file, dataset, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with open(keys_file) as lines:
        keys = [line.strip() for line in lines if line.strip()]
    print(json.dumps(asyncio.run(main(base, keys, dataset, seconds))))
