"""Set the ratings demo up through the GraphQL API only (a server must be running):

    python examples/ratings/setup_demo.py --url http://127.0.0.1:8000

1. fetch the `ratings` plugin's dataset (the appender's CSV file), as the dataset `ratings`;
2. refresh it every 10 seconds (setSchedule): each refresh that finds new ratings is a new version;
3. check every version: the score between 1 and 5 (range), a dish on every rating (notNull);
4. save the mean rating per dish over the last hour (the wrong ratings left out) as the dataset
   `mean-rating-per-dish-last-hour` (saveFrame), and print the web page's address that charts it live.

No filter compares with "now" (a filter's value is fixed when it is written), so "the last hour"
is a rolling one-hour window over the ratings' time: each dish's mean over the hour up to its
latest rating, which, with ratings arriving every second, is the last hour. The saved frame is
that mean when the set-up ran; the chart on the page is the same steps over each new version.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

import httpx

DATASET = "ratings"
FRAME_NAME = "Mean rating per dish, last hour"
FRAME = "mean-rating-per-dish-last-hour"
LAST_HOUR = "mean_last_hour"  # the column of the means
ROLLED = "score_rolling_mean"  # the window's column: each rating's dish's mean over the hour up to it
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


def mean_last_hour() -> list[dict[str, Any]]:
    """The mean score of each dish over the hour up to its latest rating, sorted by dish. The wrong
    ratings (no dish, a score out of 1-5) are left out of the mean: the checks are where they show."""
    return [
        {
            "filter": [
                {"column": "dish", "op": "NOT_NULL"},
                {"column": "score", "op": "BETWEEN", "value": [1, 5]},
            ]
        },
        {"window": [{"column": "score", "fn": "ROLLING_MEAN", "period": "1h", "orderBy": "time", "by": ["dish"]}]},
        {"groupBy": {"by": ["dish"], "aggregations": [{"column": ROLLED, "fn": "LAST", "alias": LAST_HOUR}]}},
        {"sort": [{"column": "dish"}]},
    ]


def page_address(base: str, steps: list[dict[str, Any]]) -> str:
    """The web page opened on `ratings` with `steps` applied and their bar chart drawn."""
    chart = {"kind": "BAR", "x": "dish", "y": LAST_HOUR}
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


def configure(base: str, every: str = "10s", say: Any = print) -> str:
    """Set the demo up on the server at `base`; answers the page's address."""
    api = Api(base)
    fetched = api.mutate("fetchPlugin", FETCH)
    say(f"Fetched the ratings: dataset {DATASET!r}, version {fetched['dataset']['version']}, "
        f"{fetched['dataset']['rowCount']} ratings.")  # fmt: skip
    api.mutate("setSchedule", SCHEDULE, id=DATASET, every=every)
    say(f"Scheduled: {DATASET!r} is refreshed every {every}.")
    api.mutate("setChecks", SET_CHECKS, id=DATASET, checks=CHECKS)
    say("Checks set: score between 1 and 5 (range), dish not null (notNull).")
    steps = mean_last_hour()
    if api.run(EXISTS, id=FRAME)["dataset"]:  # from an earlier run of the demo: saved again, now
        api.mutate("deleteDataset", DELETE, id=FRAME)
    saved = api.mutate("saveFrame", SAVE, id=DATASET, steps=steps, name=FRAME_NAME)
    say(f"Saved the mean rating per dish, last hour, as the dataset {saved['dataset']['id']!r}.")
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
