"""lib/jic/scrape.py and lib/corpora.py: PullPush scraping (offline, via httpx.MockTransport), Essays and PANDORA
loading, Essays splitting into journal entries, cleaning."""
import json
import re
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest

from lib import corpora
from lib.corpora import load_essays, pseudonymise
from lib.jic.scrape import (
    PullPushClient,
    PullPushError,
    clean_entries,
    drop_single_entry_authors,
    essays_to_journal,
    scrape_subreddit,
    split_into_entries,
)
from lib.records import require_nonempty

FIX = Path(__file__).parent / "fixtures" / "pullpush"
AFTER, BEFORE = 1700000000, 1700100000
RAW_AUTHORS = ["quiet_maple_writer", "nightowl_journal", "inkstained_carol", "AutoModerator"]
SEARCH_URL = "https://api.pullpush.io/reddit/search/submission/"


def page(name: str) -> dict:
    return json.loads((FIX / f"{name}.json").read_text())


class FakePullPush:
    """Serves a fixed sequence of responses (fixture page name, HTTP status, or 'connect_error'); records requests."""

    def __init__(self, sequence: list):
        self.sequence = list(sequence)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.sequence:
            raise AssertionError(f"unexpected request {request.url}")
        item = self.sequence.pop(0)
        if item == "connect_error":
            raise httpx.ConnectError("connection refused", request=request)
        if isinstance(item, int):
            return httpx.Response(item, text="slow down")
        return httpx.Response(200, json=page(item))

    def client(self, max_retries: int = 5) -> PullPushClient:
        http = httpx.Client(transport=httpx.MockTransport(self.handler))
        return PullPushClient(client=http, max_retries=max_retries, backoff_s=2.0, sleep=self.sleeps.append)

    def befores(self) -> list[int]:
        return [int(r.url.params["before"]) for r in self.requests]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ PullPush


def test_pages_paginates_backwards_and_stops_below_after():
    fake = FakePullPush(["page_1", "page_2", "page_3"])
    pages = list(fake.client().pages("Journaling", AFTER, BEFORE, size=4))
    assert [[p["id"] for p in pg] for pg in pages] == [
        ["1aa001", "1aa002", "1aa003", "1aa004"], ["1aa004", "1aa005", "1aa006", "1aa007"], ["1aa008", "1aa009"]]
    # next `before` is the oldest created_utc of the previous page; 1aa010 is older than `after`, so it stops
    assert fake.befores() == [BEFORE, 1700060000, 1700030000]
    params = fake.requests[0].url.params
    assert (params["subreddit"], params["size"], params["after"], params["sort"], params["sort_type"]) == (
        "Journaling", "4", str(AFTER), "desc", "created_utc")
    assert str(fake.requests[0].url).startswith(SEARCH_URL)


def test_pages_stops_on_empty_page():
    fake = FakePullPush(["page_1", "page_empty"])
    pages = list(fake.client().pages("Journaling", 0, BEFORE, size=4))
    assert len(pages) == 1
    assert fake.befores() == [BEFORE, 1700060000]


def test_pages_guards_against_a_page_that_does_not_advance():
    fake = FakePullPush(["page_1", "page_1"])
    with pytest.raises(PullPushError, match="did not advance"):
        list(fake.client().pages("Journaling", 0, BEFORE, size=4))
    assert len(fake.requests) == 2


def test_backoff_retries_429_5xx_and_connection_errors():
    fake = FakePullPush([429, 503, "connect_error", "page_1"])
    data = fake.client(max_retries=5).search("Journaling", AFTER, BEFORE, size=4)
    assert [p["id"] for p in data] == ["1aa001", "1aa002", "1aa003", "1aa004"]
    assert fake.sleeps == [2.0, 4.0, 8.0]
    assert len(fake.requests) == 4


def test_error_after_retries_names_url_and_status():
    fake = FakePullPush([503, 503, 503])
    with pytest.raises(PullPushError) as err:
        fake.client(max_retries=2).search("Journaling", AFTER, BEFORE)
    assert SEARCH_URL in str(err.value) and "HTTP 503" in str(err.value) and "3 attempts" in str(err.value)
    assert fake.sleeps == [2.0, 4.0]
    assert len(fake.requests) == 3


def test_non_retryable_status_fails_at_once():
    fake = FakePullPush([404])
    with pytest.raises(PullPushError, match="HTTP 404"):
        fake.client().search("Journaling", AFTER, BEFORE)
    assert fake.sleeps == []


def test_scrape_writes_clean_pseudonymised_records(tmp_path):
    out = tmp_path / "raw.jsonl"
    fake = FakePullPush(["page_1", 429, "page_2", "page_3"])
    stats = scrape_subreddit(fake.client(), "Journaling", AFTER, BEFORE, out, salt="s3cret", size=4)
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == ["1aa001", "1aa004", "1aa005", "1aa008", "1aa009"]
    assert stats["dropped"] == {"deleted": 1, "automoderator": 1, "duplicate_id": 1, "removed": 1,
                                "empty_selftext": 1}
    assert (stats["written"], stats["total"], stats["received"], stats["pages"]) == (5, 5, 10, 3)
    assert fake.sleeps == [2.0]
    assert recs[0] == {"id": "1aa001", "author": pseudonymise("quiet_maple_writer", "s3cret"),
                       "created_utc": 1700090000,
                       "text": "Morning pages\n\nWoke up early and wrote three pages before coffee.",
                       "source": "pullpush"}
    assert recs[1]["created_utc"] == 1700060000  # float timestamps become ints
    assert recs[2]["text"] == "Second week of the habit. The blank page feels less scary now."  # empty title


def test_pseudonymisation_never_writes_raw_authors(tmp_path):
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    scrape_subreddit(FakePullPush(["page_1", "page_2", "page_3"]).client(), "Journaling", AFTER, BEFORE, out_a,
                     salt="salt-a", size=4)
    scrape_subreddit(FakePullPush(["page_1", "page_2", "page_3"]).client(), "Journaling", AFTER, BEFORE, out_b,
                     salt="salt-b", size=4)
    raw = out_a.read_text()
    for name in RAW_AUTHORS + ["t2_qmw001", "t2_now002", "t2_isc003"]:
        assert name not in raw
    a, b = read_jsonl(out_a), read_jsonl(out_b)
    by_id = {r["id"]: r["author"] for r in a}
    assert by_id["1aa001"] == by_id["1aa005"]  # same author -> same pseudonym
    assert by_id["1aa004"] == by_id["1aa008"]
    assert len(set(by_id.values())) == 3
    assert all(re.fullmatch(r"u_[0-9a-f]{16}", r["author"]) for r in a)
    assert {r["author"] for r in a}.isdisjoint({r["author"] for r in b})  # a different salt -> different ids
    with pytest.raises(ValueError, match="salt"):
        pseudonymise("someone", "")


def test_scrape_resumes_without_duplicates(tmp_path):
    full = tmp_path / "full.jsonl"
    scrape_subreddit(FakePullPush(["page_1", "page_2", "page_3"]).client(), "Journaling", AFTER, BEFORE, full,
                     salt="s", size=4)
    out = tmp_path / "raw.jsonl"
    first = FakePullPush(["page_1", 500, 500])  # the run dies on page 2
    with pytest.raises(PullPushError):
        scrape_subreddit(first.client(max_retries=1), "Journaling", AFTER, BEFORE, out, salt="s", size=4)
    assert [r["id"] for r in read_jsonl(out)] == ["1aa001", "1aa004"]
    second = FakePullPush(["page_2", "page_3"])  # the rest of the sequence
    stats = scrape_subreddit(second.client(), "Journaling", AFTER, BEFORE, out, salt="s", size=4)
    assert second.befores()[0] == 1700060001  # oldest saved + 1, so posts sharing that second are not lost
    assert stats["resumed"] and (stats["existing"], stats["written"], stats["total"]) == (2, 3, 5)
    assert stats["dropped"] == {"duplicate_id": 1, "removed": 1, "empty_selftext": 1}
    assert out.read_text() == full.read_text()


def test_scrape_resume_cuts_a_torn_last_line(tmp_path):
    out = tmp_path / "raw.jsonl"
    good = {"id": "1aa001", "author": "u_x", "created_utc": 1700090000, "text": "t", "source": "pullpush"}
    out.write_text(json.dumps(good) + "\n" + '{"id": "1aa004", "auth')
    fake = FakePullPush(["page_empty"])
    stats = scrape_subreddit(fake.client(), "Journaling", AFTER, BEFORE, out, salt="s", size=4)
    assert stats["dropped"] == {"torn_line": 1}
    assert read_jsonl(out) == [good]


def test_scrape_max_items_counts_saved_records(tmp_path):
    out = tmp_path / "raw.jsonl"
    fake = FakePullPush(["page_1"])
    stats = scrape_subreddit(fake.client(), "Journaling", AFTER, BEFORE, out, salt="s", max_items=2, size=4)
    assert (stats["written"], stats["total"], len(fake.requests)) == (2, 2, 1)
    again = FakePullPush([])
    stats = scrape_subreddit(again.client(), "Journaling", AFTER, BEFORE, out, salt="s", max_items=2, size=4)
    assert (stats["written"], stats["total"], len(again.requests)) == (0, 2, 0)


# ------------------------------------------------------------------------------------------------ Essays

ESSAYS_MIRROR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "essays" / "essays.csv"


def write_essays(path: Path, drop: str | None = None) -> Path:
    df = pd.DataFrame({
        "split": [0, 5, 5, 7],
        "TEXT": ["Train essay. It is ok.", "First journal essay. Café talk.", "Second one here.", "Third one."],
        "cEXT": [1, 1, 0, 0], "cNEU": [0, 0, 0, 1], "cAGR": [0, 0, 1, 0], "cCON": [0, 1, 0, 1], "cOPN": [1, 0, 1, 1],
    })
    if drop:
        df = df.drop(columns=[drop])
    df.to_csv(path, index=False, encoding="utf-8")
    return path


def test_load_essays_renames_labels_and_filters_folds(tmp_path):
    path = write_essays(tmp_path / "essays.csv")
    df = load_essays(path, folds=[5, 6, 7, 8, 9])
    assert list(df.columns) == ["author", "text", "O", "C", "E", "A", "N", "fold"]
    assert df["fold"].tolist() == [5, 5, 7]
    assert df["text"].tolist() == ["First journal essay. Café talk.", "Second one here.", "Third one."]
    assert df[["O", "C", "E", "A", "N"]].values.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 1, 0], [1, 1, 0, 0, 1]]
    assert df["author"].tolist() == [pseudonymise(f"essay-{i}", "essays") for i in (1, 2, 3)]
    # authors come from the row in the whole file, not from the selection
    assert load_essays(path, folds=[7])["author"].tolist() == [df["author"].iloc[2]]
    assert load_essays(path, folds=[5, 7], limit=1)["fold"].tolist() == [5]


def test_load_essays_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_essays(tmp_path / "nowhere.csv", folds=[5])
    bad = write_essays(tmp_path / "bad.csv", drop="cOPN")
    with pytest.raises(ValueError, match="cOPN"):
        load_essays(bad, folds=[5])
    with pytest.raises(ValueError, match="folds"):
        load_essays(write_essays(tmp_path / "ok.csv"), folds=[10])


@pytest.mark.skipif(not ESSAYS_MIRROR.exists(), reason="offline data mirror not present")
def test_load_essays_real_mirror():
    df = load_essays(ESSAYS_MIRROR, folds=range(10))
    assert len(df) == 2468
    assert sorted(df["fold"].unique().tolist()) == list(range(10))
    assert df["author"].nunique() == 2468
    assert set(df[["O", "C", "E", "A", "N"]].values.ravel().tolist()) == {0, 1}
    assert len(load_essays(ESSAYS_MIRROR, folds=[5, 6, 7, 8, 9])) == 1232


def test_split_into_entries_groups_sentences():
    text = ("I woke up. It was cold. The cat sat on me. I made tea. Then I read. "
            "Later I walked to the lake and back again slowly. Done.")
    assert split_into_entries(text, sentences_per_entry=2, min_words=5, max_words=12) == [
        "I woke up. It was cold.",
        "The cat sat on me. I made tea.",
        "Then I read.",  # closed early: the next sentence would pass max_words
        "Later I walked to the lake and back again slowly. Done.",
    ]


def test_split_into_entries_windows_run_on_text_and_merges_short_tail():
    words = [f"w{i}" for i in range(1, 26)]
    assert split_into_entries(" ".join(words), sentences_per_entry=5, min_words=3, max_words=10) == [
        " ".join(words[:10]), " ".join(words[10:20]), " ".join(words[20:])]
    text = "Alpha beta gamma delta. Epsilon zeta eta theta. Iota."
    assert split_into_entries(text, sentences_per_entry=2, min_words=3) == [text]
    assert split_into_entries("What else to say. . . . . I remembered it.", 1, 1) == [
        "What else to say. . . . .", "I remembered it."]
    assert split_into_entries("   ", 5, 20) == []


def test_essays_to_journal_records():
    df = pd.DataFrame({"author": ["u_a", "u_b"],
                       "text": ["One two. Three four. Five six.", "Seven eight nine."]})
    recs = essays_to_journal(df, sentences_per_entry=1, min_words=2, max_entries_per_author=2)
    assert recs == [
        {"id": "u_a-000", "author": "u_a", "entry_index": 0, "text": "One two.", "source": "essays"},
        {"id": "u_a-001", "author": "u_a", "entry_index": 1, "text": "Three four.", "source": "essays"},
        {"id": "u_b-000", "author": "u_b", "entry_index": 0, "text": "Seven eight nine.", "source": "essays"},
    ]


# ------------------------------------------------------------------------------------------------ cleaning

EN = ("Today I finally cleaned my desk and found old letters from my grandmother, which made me think about "
      "how much I miss the summers we spent together at the lake.")
DE = ("Heute habe ich endlich meinen Schreibtisch aufgeräumt und alte Briefe von meiner Großmutter gefunden, "
      "und ich habe lange darüber nachgedacht, wie sehr ich die Sommer am See vermisse.")
ES = ("Hoy por fin ordené mi escritorio y encontré cartas antiguas de mi abuela, y pensé mucho en cuánto extraño "
      "los veranos que pasamos juntas en el lago cuando era pequeña.")


def test_clean_entries_counts_every_reason():
    recs = [{"id": "en", "text": EN}, {"id": "de", "text": DE}, {"id": "es", "text": ES},
            {"id": "blank", "text": "  \n\t "}, {"id": "short", "text": "Too short to keep."},
            {"id": "dup", "text": EN.replace(" ", "  ", 3)}, {"id": "digits", "text": "0, 0. " * 12}]
    kept, dropped = clean_entries(recs, min_words=20)
    assert [r["id"] for r in kept] == ["en"]
    assert dropped == Counter(non_english=2, blank=1, too_short=1, duplicate=1, undetected_language=1)
    kept, dropped = clean_entries(recs, min_words=20, lang=None)
    assert [r["id"] for r in kept] == ["en", "de", "es", "digits"]
    with pytest.raises(TypeError, match="'x'"):
        clean_entries([{"id": "x"}])


def test_drop_single_entry_authors():
    recs = [{"id": str(i), "author": a} for i, a in enumerate(["a", "b", "a", "c", "c", "c"])]
    kept, dropped = drop_single_entry_authors(recs)
    assert [r["id"] for r in kept] == ["0", "2", "3", "4", "5"]
    assert dropped == Counter(single_entry_author=1)
    kept, dropped = drop_single_entry_authors(recs, min_entries=3)
    assert [r["id"] for r in kept] == ["3", "4", "5"]
    assert dropped == Counter(single_entry_author=1, too_few_entries=2)


def test_require_nonempty():
    assert require_nonempty([{"id": "1"}], "journal entries") == [{"id": "1"}]
    with pytest.raises(ValueError, match=r"empty corpus: journal entries .*min_words"):
        require_nonempty([], "journal entries")


def test_pandora_frame_labels_scores_above_40_and_finds_columns():
    raw = pd.DataFrame({"body": ["a comment", "another", "  "], "Openness": [41, 40, 90],
                        "conscientiousness": [0, 99, 1], "extraversion": [50, 10, 1], "agreeableness": [40.5, 3, 1],
                        "neuroticism": [100, 0, 1]})
    out = corpora.pandora_frame(raw)
    assert list(out.columns) == ["text", "O", "C", "E", "A", "N"]
    assert out.to_dict(orient="list") == {"text": ["a comment", "another"], "O": [1, 0], "C": [0, 1], "E": [1, 0],
                                          "A": [1, 0], "N": [1, 0]}  # the blank comment is dropped


def test_pandora_frame_names_what_is_missing():
    with pytest.raises(ValueError, match=r"PANDORA train: expected a text column .* found \['body', 'openness'\]"):
        corpora.pandora_frame(pd.DataFrame({"body": ["x"], "openness": [1]}), split="train")


def test_load_pandora_reads_a_split_csv_from_a_hub_cache(tmp_path, monkeypatch):
    """The paper profile's hf:// path resolves through the Hugging Face cache (lib.hub), offline, to the CSV."""
    import huggingface_hub.constants

    from lib import config, hub
    from tests.standins.hub_cache import put_dataset

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    files = tmp_path / "files" / "Personality Datasets - Reddit"
    files.mkdir(parents=True)
    pd.DataFrame({"body": ["t", "u"], "openness": [60, 10], "conscientiousness": [1, 99], "extraversion": [1, 1],
                  "agreeableness": [1, 1], "neuroticism": [1, 1]}).to_csv(files / "eval_set.csv", index=False)
    put_dataset(tmp_path / "hub", corpora.PANDORA_ID, tmp_path / "files")
    uri = f"hf://datasets/{corpora.PANDORA_ID}/Personality Datasets - Reddit/eval_set.csv"
    test = corpora.load_pandora(config.data_path({"data": {"root": "."}}, uri), split="test")
    assert test.O.tolist() == [1, 0] and test.C.tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        hub.dataset_file(f"hf://datasets/{corpora.PANDORA_ID}/Personality Datasets - Reddit/missing.csv")
