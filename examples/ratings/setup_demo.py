"""Set the ratings demo up through the GraphQL API only (a server must be running):

    python examples/ratings/setup_demo.py --url http://127.0.0.1:8000

1. fetch the `ratings` plugin's dataset (the appender's CSV file), as the dataset `ratings`;
2. refresh it every 10 seconds (setSchedule): each refresh that finds new ratings is a new version;
3. check every version: the score between 1 and 5 (range), a dish on every rating (notNull);
4. save the mean rating per dish over the last hour (the wrong ratings left out) as the dataset
   `mean-rating-per-dish` (saveFrame), and print the web page's address that charts it live.

The API's filters compare with fixed values: nothing in a step says "an hour before now". So
"the last hour" is fixed when this runs: the ratings since an hour before the demo started (all
of them, in a demo's first hour). The saved frame is the mean at that moment; the chart on the
page is the same pipeline over the current version, redrawn at each new one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any
from urllib.parse import quote

import httpx

DATASET = "ratings"
FRAME_NAME = "Mean rating per dish"
FRAME = "mean-rating-per-dish"
CHECKS = [{"range": {"column": "score", "min": 1, "max": 5}}, {"notNull": ["dish"]}]
PAYLOAD = "success error { code message } dataset { id version rowCount }"
FETCH = f'mutation {{ fetchPlugin(plugin: "ratings", name: "{DATASET}") {{ {PAYLOAD} }} }}'
SCHEDULE = f"mutation($id: ID!, $every: String) {{ setSchedule(dataset: $id, every: $every) {{ {PAYLOAD} }} }}"
SET_CHECKS = f"""mutation($id: ID!, $checks: [CheckInput!]!) {{
  setChecks(dataset: $id, checks: $checks) {{ {PAYLOAD} }}
}}"""
EXISTS = "query($id: ID!) { dataset(id: $id) { id } }"
DELETE = "mutation($id: ID!) { deleteDataset(id: $id) { success error { code message } } }"
SAVE = f"""mutation($id: ID!, $steps: [Step!]!, $name: String!) {{
  saveFrame(dataset: $id, steps: $steps, name: $name) {{ {PAYLOAD} }}
}}"""


class Refused(Exception):
    """The API answered a problem (or a GraphQL error) for a step of the set-up."""


def steps_since(since: dt.datetime) -> list[dict[str, Any]]:
    """The mean score per dish of the ratings from `since` on, sorted by dish. The wrong ratings
    (no dish, a score out of 1-5) are left out of the mean: the checks are where they show."""
    when = since.isoformat(timespec="seconds")
    return [
        {
            "filter": [
                {"column": "time", "op": "GE", "value": when},
                {"column": "dish", "op": "NOT_NULL"},
                {"column": "score", "op": "BETWEEN", "value": [1, 5]},
            ]
        },
        {"groupBy": {"by": ["dish"], "aggregations": [{"column": "score", "fn": fn} for fn in ("MEAN", "COUNT")]}},
        {"sort": [{"column": "dish"}]},
    ]


def page_address(base: str, steps: list[dict[str, Any]]) -> str:
    """The web page opened on `ratings` with `steps` applied and their bar chart drawn."""
    chart = {"kind": "BAR", "x": "dish", "y": "score_mean"}
    compact = {"separators": (",", ":")}
    return (
        f"{base}/?steps={quote(json.dumps(steps, **compact))}"  # type: ignore[arg-type]
        f"&chart={quote(json.dumps(chart, **compact))}#{DATASET}"  # type: ignore[arg-type]
    )


class Api:
    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=60)

    def run(self, query: str, **variables: Any) -> dict[str, Any]:
        """The `data` of a GraphQL request; Refused on any GraphQL error."""
        body = self.client.post("/graphql", json={"query": query, "variables": variables}).json()
        if body.get("errors"):
            raise Refused("; ".join(e["message"] for e in body["errors"]))
        data: dict[str, Any] = body["data"]
        return data

    def mutate(self, field: str, query: str, **variables: Any) -> dict[str, Any]:
        """The payload of one mutation; Refused with its problem when it did not succeed."""
        payload: dict[str, Any] = self.run(query, **variables)[field]
        if not payload["success"]:
            raise Refused(f"{payload['error']['code']}: {payload['error']['message']}")
        return payload


def missing_field(error: Refused, field: str) -> bool:
    """Whether the server does not have `field` at all (an older server)."""
    return f"Cannot query field '{field}'" in str(error) or f'Cannot query field "{field}"' in str(error)


def configure(base: str, every: str = "10s", say: Any = print) -> str:
    """Set the demo up on the server at `base`; answers the page's address."""
    api = Api(base)
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    fetched = api.mutate("fetchPlugin", FETCH)
    say(f"Fetched the ratings: dataset {DATASET!r}, version {fetched['dataset']['version']}, "
        f"{fetched['dataset']['rowCount']} ratings.")  # fmt: skip
    try:
        api.mutate("setSchedule", SCHEDULE, id=DATASET, every=every)
        say(f"Scheduled: {DATASET!r} is refreshed every {every}.")
    except Refused as error:
        if not missing_field(error, "setSchedule"):
            raise
        say("SKIPPED the schedule: this server has no setSchedule yet, so nothing refreshes the ratings.")
    try:
        api.mutate("setChecks", SET_CHECKS, id=DATASET, checks=CHECKS)
        say("Checks set: score between 1 and 5 (range), dish not null (notNull).")
    except Refused as error:
        if not missing_field(error, "setChecks"):
            raise
        say("SKIPPED the checks: this server has no setChecks yet.")
    since = started - dt.timedelta(hours=1)
    steps = steps_since(since)
    if api.run(EXISTS, id=FRAME)["dataset"]:  # from an earlier run of the demo: saved again, over this run's hour
        api.mutate("deleteDataset", DELETE, id=FRAME)
    saved = api.mutate("saveFrame", SAVE, id=DATASET, steps=steps, name=FRAME_NAME)
    say(f"Saved the mean rating per dish since {since:%H:%M} UTC as the dataset {saved['dataset']['id']!r}.")
    return page_address(base, steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (http://127.0.0.1:8000)")
    parser.add_argument("--every", default="10s", help="how often the ratings are refreshed (10s)")
    args = parser.parse_args(argv)
    try:
        address = configure(args.url.rstrip("/"), args.every)
    except (Refused, httpx.HTTPError) as error:
        sys.exit(f"The set-up failed: {error}")
    print(f"Open {address}")


if __name__ == "__main__":
    main()
