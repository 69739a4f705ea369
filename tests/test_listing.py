"""Listing datasets a page at a time (issue 18): `datasets(limit, offset, search, source)` and
`datasetCount`, answered from the metadata store with an index, oldest first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import DATA, Api, make_settings, serving

from storage import MetadataStore

PAGE = "query($limit: Int, $offset: Int, $search: String, $source: ID) {"
PAGE += " datasets(limit: $limit, offset: $offset, search: $search, source: $source) { id name } }"
COUNT = "query($search: String, $source: ID) { datasetCount(search: $search, source: $source) }"
# Names a LIKE pattern would mistake for wildcards, beside the names those wildcards would match.
TRICKY = {
    "juice-pct": "100% Juice",
    "juice-plain": "100 Juice",
    "under": "a_b totals",
    "under-like": "axb totals",
    "slash": "back\\slash",
}


def add_ready(metadata: MetadataStore, wanted_id: str, name: str, source_id: str = "uploads") -> str:
    """A ready dataset row, made through the metadata store's own API (no file: listing reads none)."""
    dataset_id = metadata.reserve_dataset(wanted_id=wanted_id, name=name, source_id=source_id, origin={})
    metadata.mark_ready(dataset_id, version=1, row_count=0, columns=[], origin={})
    return dataset_id


def metadata_of(app: Api) -> MetadataStore:
    store: MetadataStore = app.client.app.state.resources.metadata  # type: ignore[attr-defined]
    return store


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the module's reads: penguins uploaded, 30 datasets of "uploads" and 10 of "frames",
    and the tricky names. Datasets are only read here."""
    with serving(make_settings(tmp_path_factory.mktemp("listing"), datasets_max_page=25)) as app:
        app.upload_ok(DATA / "penguins.csv")
        store = metadata_of(app)
        for i in range(30):
            add_ready(store, f"up-{i:02d}", f"Upload {i:02d}")
        for i in range(10):
            add_ready(store, f"fr-{i:02d}", f"Frame {i:02d}", "frames")
        for dataset_id, name in TRICKY.items():
            add_ready(store, dataset_id, name)
        yield app


def ids(app: Api, **variables: Any) -> list[str]:
    return [d["id"] for d in app.data(PAGE, variables)["datasets"]]


def test_no_arguments_lists_every_dataset_oldest_first(listing: Api) -> None:
    every = ids(listing)
    assert len(every) == 1 + 30 + 10 + len(TRICKY)
    assert every[:3] == ["penguins", "up-00", "up-01"] and every[-1] == "slash"
    assert every == [d["id"] for d in listing.data("{ datasets { id } }")["datasets"]]


def test_pages_follow_one_another_without_gaps_or_repeats(listing: Api) -> None:
    every = ids(listing)
    paged = [i for offset in range(0, len(every), 7) for i in ids(listing, limit=7, offset=offset)]
    assert paged == every
    assert ids(listing, limit=5, offset=len(every)) == []


def test_search_matches_the_id_or_the_name_in_any_case(listing: Api) -> None:
    assert ids(listing, search="UPLOAD 1") == [f"up-{i}" for i in range(10, 20)]
    assert ids(listing, search="fr-0") == [f"fr-{i:02d}" for i in range(10)]
    assert ids(listing, search="  penGUIN ") == ["penguins"]
    assert ids(listing, search="nothing like it") == []
    assert ids(listing, search="") == ids(listing)


@pytest.mark.parametrize(
    ("search", "found"),
    [("0%", ["juice-pct"]), ("a_b", ["under"]), ("%", ["juice-pct"]), ("_", ["under"]), ("k\\s", ["slash"])],
)
def test_search_takes_percent_underscore_and_backslash_as_plain_characters(
    listing: Api, search: str, found: list[str]
) -> None:
    assert ids(listing, search=search) == found
    assert listing.data(COUNT, {"search": search})["datasetCount"] == len(found)


def test_source_keeps_one_sources_datasets(listing: Api) -> None:
    assert ids(listing, source="frames") == [f"fr-{i:02d}" for i in range(10)]
    assert ids(listing, source="frames", search="frame 05") == ["fr-05"]
    assert ids(listing, source="no-such-source") == []
    nested = listing.data('{ source(id: "frames") { datasets(limit: 3, offset: 2) { id } } }')
    assert [d["id"] for d in nested["source"]["datasets"]] == ["fr-02", "fr-03", "fr-04"]


def test_dataset_count_is_the_total_of_every_page(listing: Api) -> None:
    assert listing.data("{ datasetCount }")["datasetCount"] == len(ids(listing))
    assert listing.data(COUNT, {"source": "frames"})["datasetCount"] == 10
    assert listing.data(COUNT, {"search": "upload", "source": "uploads"})["datasetCount"] == 30


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"limit": 26}, "between 1 and 25 (setting datasets_max_page)"),
        ({"limit": 0}, "between 1 and 25"),
        ({"limit": -1}, "between 1 and 25"),
        ({"limit": 5, "offset": -1}, "offset must be 0 or more"),
        ({"search": "x" * 201}, "at most 200 characters"),
    ],
)
def test_a_page_out_of_bounds_is_bad_input(listing: Api, variables: dict[str, Any], words: str) -> None:
    body = listing.query(PAGE, variables)
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "BAD_INPUT" and words in error["message"], error


def test_the_largest_page_is_answered(listing: Api) -> None:
    assert len(ids(listing, limit=25)) == 25


def test_a_listed_dataset_still_answers_every_field(listing: Api) -> None:
    """Columns and the plan are made on use, not for each listed dataset: still there when asked."""
    query = '{ datasets(limit: 1, search: "penguins") { id columns { name } rowCount count { data } } }'
    (penguins,) = listing.data(query)["datasets"]
    assert penguins["rowCount"] == 344 and penguins["count"]["data"] == {"count": 344}
    assert [c["name"] for c in penguins["columns"]][:2] == ["species", "island"]


def _index_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {i["name"] for i in sa.inspect(engine).get_indexes("datasets")}
    finally:
        engine.dispose()


def test_a_fresh_database_has_the_listing_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    MetadataStore(url).close()
    assert {"ix_datasets_listing", "ix_datasets_source_listing"} <= _index_names(url)


def test_an_older_database_gets_the_indexes_when_opened_and_again_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    MetadataStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as a version before the listing indexes left it
        conn.exec_driver_sql("DROP INDEX ix_datasets_listing")
        conn.exec_driver_sql("DROP INDEX ix_datasets_source_listing")
    engine.dispose()
    assert not {"ix_datasets_listing", "ix_datasets_source_listing"} & _index_names(url)
    for _ in range(2):
        store = MetadataStore(url)
        add_ready(store, "kept", "Kept")
        store.close()
    assert {"ix_datasets_listing", "ix_datasets_source_listing"} <= _index_names(url)
    store = MetadataStore(url)
    assert [r.id for r in store.list_datasets()] == ["kept", "kept-2"]
    store.close()


def test_the_listing_query_reads_the_index(tmp_path: Path) -> None:
    """SQLite's plan for a page walks the index in order: no sort of every row."""
    url = f"sqlite:///{tmp_path / 'plan.sqlite3'}"
    MetadataStore(url).close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        query = "SELECT id FROM datasets WHERE status = 'ready' ORDER BY created_at, id LIMIT 100"
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query))
        by_source = query.replace("WHERE", "WHERE source_id = 'frames' AND")
        plan_by_source = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + by_source))
    engine.dispose()
    assert "ix_datasets_listing" in plan and "TEMP B-TREE" not in plan, plan
    assert "ix_datasets_source_listing" in plan_by_source and "TEMP B-TREE" not in plan_by_source, plan_by_source


def test_pages_stay_in_order_while_datasets_are_added(tmp_path: Path) -> None:
    """Oldest first: a dataset added while a client pages lands after every page it has, not in them."""
    with serving(make_settings(tmp_path)) as app:
        store = metadata_of(app)
        for i in range(9):
            add_ready(store, f"d{i}", f"D {i}")
        first = ids(app, limit=4, offset=0)
        added = add_ready(store, "a-new-one", "A new one")  # sorts first by id and name; last by age
        second = ids(app, limit=4, offset=4)
        third = ids(app, limit=4, offset=8)
        assert first + second + third == [*(f"d{i}" for i in range(9)), added]
        assert app.data("{ datasetCount }")["datasetCount"] == 10


def test_postgresql_pages_searches_and_counts_the_same(scratch_postgres: str) -> None:
    """The store on PostgreSQL (its LIKE is case-sensitive, ILIKE is not): the indexes, a page, a
    search with wildcards as plain characters, in any case, and the count."""
    store = MetadataStore(scratch_postgres)
    try:
        for dataset_id, name in TRICKY.items():
            add_ready(store, dataset_id, name)
        add_ready(store, "upper", "SHOUTED Name", "frames")
        assert {"ix_datasets_listing", "ix_datasets_source_listing"} <= _index_names(scratch_postgres)
        assert [r.id for r in store.list_datasets(limit=2, offset=1)] == ["juice-plain", "under"]
        assert [r.id for r in store.list_datasets(search="0%")] == ["juice-pct"]
        assert [r.id for r in store.list_datasets(search="_")] == ["under"]
        assert [r.id for r in store.list_datasets(search="k\\s")] == ["slash"]
        assert [r.id for r in store.list_datasets(search="shouted name", source_id="frames")] == ["upper"]
        assert store.count_datasets(search="TOTALS") == 2 and store.count_datasets(source_id="frames") == 1
    finally:
        store.close()
    MetadataStore(scratch_postgres).close()  # opened again: the indexes are there, nothing to do
