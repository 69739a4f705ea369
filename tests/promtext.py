"""Read Prometheus text as the tests need it: one sample's value by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, metric: str, /, **labels: str) -> float:
    """The value of the sample `metric` whose labels include `labels`; 0 when there is none yet
    (a counter that never moved), the sum when several match."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
