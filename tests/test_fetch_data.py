"""The data set-up step (lib/fetch_data.py) against a local HTTP server, and its manifest against the mirror.

The server is a thread serving a temp copy of a few small mirror files; nothing here touches the network. The
derived files' upstream files are built here from the mirror's own files (the inverse of each conversion), so the
tests check the rebuild without holding any upstream data; the recorded upstream checksums were checked once against
the real upstream files, when they were recorded.
"""
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lib import config
from lib import fetch_data as fd

MIRROR = fd.default_dest("cpu")  # ../shared/data
SMALL = ("characters/hp_movies_Movies.csv", "characters/hp_movies_Chapters.csv", "instruments/bfi_44.csv")
MEMBERS = ("reasoning/piqa/valid-labels.lst", "reasoning/social_iqa/dev-labels.lst")  # served inside one zip

pytestmark = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no data mirror at {MIRROR}")


class Server:
    """A local HTTP server: `routes` maps a URL path to (mode, bytes); mode ok | cut (half the body, then close)."""

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                mode, body = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a user's proxy settings must not catch the loopback server
    monkeypatch.setenv("NO_PROXY", "*")
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def manifest() -> dict[str, fd.Entry]:
    return {e.path: e for e in fd.load_manifest()}


def hosted(server: Server, manifest: dict, paths=SMALL) -> list[fd.Entry]:
    """Serve a copy of `paths` as a hosted mirror (base-url + mirror path); their manifest entries."""
    for rel in paths:
        server.routes[f"/mirror/{rel}"] = ("ok", (MIRROR / rel).read_bytes())
    return [manifest[rel] for rel in paths]


def canonical(server: Server, manifest: dict) -> list[fd.Entry]:
    """The entries with their canonical URLs moved to the server: plain files, and two members of one zip."""
    entries = []
    for rel in SMALL[:2]:
        server.routes[f"/raw/{rel}"] = ("ok", (MIRROR / rel).read_bytes())
        entries.append(dataclasses.replace(manifest[rel], url=f"{server.url}/raw/{rel}"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel in MEMBERS:
            zf.writestr(f"inner/{rel}", (MIRROR / rel).read_bytes())
    server.routes["/raw/archive.zip"] = ("ok", buf.getvalue())
    for rel in MEMBERS:
        entries.append(dataclasses.replace(manifest[rel], url=f"{server.url}/raw/archive.zip", member=f"inner/{rel}"))
    return entries


def leftovers(dest: Path) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.partial"))


def quiet(msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------------
# Fetching


def test_fresh_destination_gets_verified_files_and_a_second_run_downloads_nothing(server, manifest, tmp_path):
    entries = canonical(server, manifest)
    result = fd.fetch(dest=tmp_path, entries=entries, log=quiet)
    assert (result.present, result.fetched) == (0, len(entries))
    for e in entries:
        assert (tmp_path / e.path).read_bytes() == (MIRROR / e.path).read_bytes()
    assert server.requests.count("/raw/archive.zip") == 1  # one download for both members
    assert leftovers(tmp_path) == []

    before = len(server.requests)
    again = fd.fetch(dest=tmp_path, entries=entries, log=quiet)
    assert (again.present, again.fetched) == (len(entries), 0)
    assert len(server.requests) == before


def test_base_url_fetches_mirror_paths_including_derived_files(server, manifest, tmp_path):
    entries = hosted(server, manifest)
    assert any(e.url is None for e in entries)  # bfi_44.csv: derived, but a hosted mirror has it
    result = fd.fetch(dest=tmp_path, base_url=server.url + "/mirror/", entries=entries, log=quiet)
    assert result.fetched == len(entries)
    assert sorted(server.requests) == sorted(f"/mirror/{e.path}" for e in entries)
    assert all((tmp_path / e.path).read_bytes() == (MIRROR / e.path).read_bytes() for e in entries)


def test_derived_file_without_a_recipe_is_an_error_that_says_what_to_do(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(fd, "_open", lambda url: pytest.fail(f"no download expected, got {url}"))
    rel = "instruments/bfi_44.csv"
    entry = dataclasses.replace(manifest[rel], derive=None, derived=f"{fd.DERIVED[rel]}; not published verbatim")
    with pytest.raises(fd.FetchError) as err:
        fd.fetch(dest=tmp_path, entries=[entry], log=quiet)
    msg = str(err.value)
    assert "instruments/bfi_44.csv" in msg and "PsychoBench" in msg and "--base-url" in msg
    assert "Copy it from a machine that has the mirror" in msg
    assert not (tmp_path / "instruments" / "bfi_44.csv").exists()


@pytest.mark.parametrize("fault", ["checksum", "404", "cut", "zip-checksum"])
def test_a_bad_download_raises_naming_file_and_url_and_leaves_nothing(fault, server, manifest, tmp_path):
    entries = canonical(server, manifest)
    bad = entries[0] if fault != "zip-checksum" else entries[-1]
    route = bad.url.removeprefix(server.url)
    body = server.routes[route][1]
    if fault == "checksum":  # same length, one byte changed: only the SHA-256 can tell
        server.routes[route] = ("ok", body[:-1] + bytes([body[-1] ^ 1]))
    elif fault == "404":
        del server.routes[route]
    elif fault == "cut":  # Content-Length promises the whole file; the connection closes halfway
        server.routes[route] = ("cut", body)
    else:
        bad = dataclasses.replace(bad, sha256="0" * 64)
        entries[-1] = bad
    with pytest.raises(fd.FetchError) as err:
        fd.fetch(dest=tmp_path, entries=entries, log=quiet)
    msg = str(err.value)
    assert bad.path in msg and bad.url in msg
    assert {"checksum": "sha256", "404": "HTTP 404", "cut": "closed after", "zip-checksum": "sha256"}[fault] in msg
    assert not (tmp_path / bad.path).exists()
    assert leftovers(tmp_path) == []
    good = [e for e in entries if e.path != bad.path]
    assert all((tmp_path / e.path).read_bytes() == (MIRROR / e.path).read_bytes() for e in good)  # the rest arrived


def test_a_file_that_differs_from_the_manifest_is_fetched_again(server, manifest, tmp_path):
    entries = hosted(server, manifest, SMALL[:1])
    stale = tmp_path / SMALL[0]
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    result = fd.fetch(dest=tmp_path, base_url=server.url + "/mirror", entries=entries, log=quiet)
    assert result.fetched == 1 and stale.read_bytes() == (MIRROR / SMALL[0]).read_bytes()


def test_the_mirror_already_in_place_means_no_network(monkeypatch, capsys):
    monkeypatch.setattr(fd, "_open", lambda url: pytest.fail(f"no download expected, got {url}"))
    assert fd.main(["--dest", str(MIRROR)]) == 0
    n = len(fd.load_manifest())
    assert f"{n} files already in place, 0 fetched" in capsys.readouterr().out
    result = fd.fetch("cpu", log=quiet)  # the default destination is the profile's data.root
    assert result.dest == MIRROR and result.fetched == 0 and result.present > 0


# ---------------------------------------------------------------------------------------------------------------
# The manifest


def test_manifest_is_current_with_the_mirror():
    assert fd.render_manifest(fd.build_manifest(MIRROR)) == fd.MANIFEST_FILE.read_text(encoding="utf-8"), \
        "lib/data_manifest.json is stale: run python -m lib.fetch_data --write-manifest"


def test_manifest_covers_dvc_deps_and_every_profile(manifest):
    deps = fd.dvc_files()
    assert deps, "dvc.yaml lists no ../shared/data deps: the parser is broken"
    for rel in deps:
        assert rel in manifest or any(p.startswith(rel + "/") for p in manifest), rel
    for profile in config.PROFILES:
        chosen = {e.path for e in fd.select(list(manifest.values()), profile)}
        assert set(deps) <= chosen and "instruments/bfi_44.csv" in chosen, profile
    for e in manifest.values():
        if e.url is None:
            assert e.derived and e.member is None, e.path
            assert e.derive and e.path in fd.CONVERSIONS, f"{e.path}: derived, but no recipe to rebuild it"
            for source in e.derive:
                assert pinned(source.url) and source.size > 0 and len(source.sha256) == 64, source
        else:
            assert pinned(e.url) and e.derive is None, e.url


def pinned(url: str) -> bool:
    """A raw GitHub URL at a full commit id."""
    return url.startswith(fd.RAW + "/") and len(url.split("/")[5]) == 40


def _strings(node, keys=()):
    """(dotted key, string) for every string in a params tree (lists included)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, keys + (k,))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, keys)
    elif isinstance(node, str):
        yield ".".join(keys), node


def test_every_params_value_naming_mirror_data_is_covered():
    """A new params key pointing into the mirror must be known to fetch_data (or the fetch would miss its file)."""
    for profile in config.PROFILES:
        wanted = fd.profile_files(profile)
        for key, value in _strings(fd._params(profile)):
            if value.strip(" ./") and (MIRROR / value).exists():
                rel = os.path.normpath(value)
                assert any(w == rel or w.startswith(rel + "/") for w in wanted), \
                    f"params/{profile}.yaml: {key} = {value!r} names mirror data that lib/fetch_data.py ignores"


_opened: list | None = None


def _audit(event, args):
    if event == "open" and _opened is not None and isinstance(args[0], (str, os.PathLike)):
        _opened.append(Path(args[0]).resolve())


def test_reasoning_files_are_the_files_the_loaders_open():
    """REASONING_FILES in lib/fetch_data.py against what lib/big5chat/reasoning.py load_items really reads."""
    global _opened
    from lib.big5chat import reasoning

    if _audit not in getattr(sys, "_fd_hooks", ()):
        sys.addaudithook(_audit)
        sys._fd_hooks = (*getattr(sys, "_fd_hooks", ()), _audit)
    root = MIRROR / "reasoning"
    assert set(fd.REASONING_FILES) == set(reasoning.TASKS)
    for task in reasoning.TASKS:
        _opened = []
        try:
            reasoning.load_items(root, task)
            pool = {"gsm8k": "train", "mmlu": "dev"}.get(task)
            if pool:
                reasoning.load_items(root, task, pool)
            opened = {p.relative_to(root).as_posix() for p in _opened if p.is_relative_to(root)}
        finally:
            _opened = None
        listed = set()
        for rel in fd.REASONING_FILES[task]:
            listed |= ({p.relative_to(root).as_posix() for p in (root / rel).rglob("*") if p.is_file()}
                       if rel.endswith("/") else {rel})
        assert opened == listed, task


def test_an_unwritable_destination_is_an_error_naming_the_file(server, manifest, tmp_path):
    entries = hosted(server, manifest, SMALL[:1])
    (tmp_path / SMALL[0].split("/")[0]).write_text("a file where the folder belongs")  # fails even for root
    with pytest.raises(fd.FetchError, match=f"{SMALL[0]}: cannot write"):
        fd.fetch(dest=tmp_path, base_url=server.url + "/mirror", entries=entries, log=quiet)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# Derived files rebuilt from their upstream files. Each `upstream_*` builds, from the mirror file, upstream files in
# the format the conversion reads (the inverse of the conversion), in DERIVE_SOURCES order.


def _csv_rows(rel: str) -> list[list[str]]:
    csv.field_size_limit(1 << 30)
    with (MIRROR / rel).open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def upstream_essays() -> list[bytes]:
    """fastText test folds per split and trait. The cEXT folds follow the split column; the other traits spread the
    essays over their folds differently (rotated, reversed), as upstream, so labels must be found by text."""
    rows = _csv_rows("essays/essays.csv")
    folds = []
    for split in range(fd.ESSAY_SPLITS):
        for j, trait in enumerate(fd.ESSAY_TRAITS):
            fold = str((split + j) % fd.ESSAY_SPLITS)
            chosen = [r for r in rows if r[0] == fold]
            chosen = chosen if j == 0 else chosen[::-1]
            folds.append("".join(f"__label__label{r[2 + j]} {r[1]}\n" for r in chosen).encode("utf-8"))
    return folds


def upstream_soda() -> list[bytes]:
    """An evaluation file: three generated turns per scenario, each line carrying the scenario; null written NaN."""
    lines = []
    for idx, line in enumerate((MIRROR / "soda/soda_20.jsonl").read_text(encoding="utf-8").splitlines()):
        info = {k: math.nan if v is None else v for k, v in json.loads(line).items()}
        for turn in (0, 1, 1):
            lines.append(json.dumps({"env_idx": idx, "env_info": info, "turn": turn, "prompt": "p", "response": "r"}))
    return ["\n".join(lines).encode("utf-8") + b"\n"]


def upstream_bfi() -> list[bytes]:
    """questionnaires.json: another questionnaire first, then "BFI" with its items in reverse order."""
    rows = _csv_rows("instruments/bfi_44.csv")
    domains = dict.fromkeys(r[2] for r in rows)
    bfi = {"name": "BFI", "questions": {r[0]: r[1] for r in rows[::-1]}, "scale": 6,
           "reverse": [int(r[0]) for r in rows if r[3] == "-1"],
           "categories": [{"cat_name": d, "cat_questions": [int(r[0]) for r in rows if r[2] == d]} for d in domains]}
    return [json.dumps([{"name": "EPQ-R", "questions": {"1": "x"}}, bfi], indent=2).encode("utf-8")]


def upstream_ipip() -> list[bytes]:
    """questions.json, factors.json (with upstream's placeholders for items 31, 61, 91) and reverse.py."""
    rows = _csv_rows("instruments/ipip_neo_120.csv")
    questions = {"questions": [{"id": int(r[0]), "text": r[1]} for r in rows], "select": []}
    factors = {"factors": [{"id_question": r[0], "key": r[3], "facet": r[4]} if r[0] not in ("31", "61", "91")
                           else {"id_question": r[0], "key": "key", "facet": "facet"} for r in rows]}
    reverse = [int(r[0]) for r in rows if r[5] == "-1"]
    code = ('"""Reverse-keyed items."""\n\nIPIP_NEO_ITEMS_REVERSED_300 = [1, 2]\n\n'
            "IPIP_NEO_ITEMS_REVERSED_120 = [\n" + "".join(f"    {i},\n" for i in reverse) + "]\n")
    return [json.dumps(questions, indent=3).encode(), json.dumps(factors, indent=3).encode(), code.encode()]


UPSTREAM = {"essays/essays.csv": upstream_essays, "soda/soda_20.jsonl": upstream_soda,
            "instruments/bfi_44.csv": upstream_bfi, "instruments/ipip_neo_120.csv": upstream_ipip}


def serve_upstream(server: Server, entry: fd.Entry, files: list[bytes]) -> fd.Entry:
    """Serve `files` at the entry's recorded upstream paths on the local server (raw GitHub's base moved there).

    Returns the entry with its sources moved to the server and their checksums set to the bytes served: those are
    built from the mirror, so the recorded checksums (of the real upstream files) cannot match them."""
    sources = []
    for source, body in zip(entry.derive, files, strict=True):
        url = source.url.replace(fd.RAW, server.url + "/raw", 1)
        server.routes[urllib.parse.urlsplit(url).path] = ("ok", body)
        sources.append(fd.Source(url, len(body), hashlib.sha256(body).hexdigest()))
    return dataclasses.replace(entry, derive=tuple(sources))


def files_under(dest: Path) -> list[str]:
    """Every file and folder under `dest` but the folders on the way to a file (temporary folders included)."""
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    empty = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_dir() and not any(p.iterdir()))
    return files + empty


def test_every_derived_file_has_a_conversion_and_a_test():
    assert set(fd.DERIVE_SOURCES) == set(fd.CONVERSIONS) == set(UPSTREAM)
    assert set(fd.DERIVE_SOURCES) <= set(fd.DERIVED)


@pytest.mark.parametrize("rel", sorted(UPSTREAM))
def test_a_derived_file_is_rebuilt_byte_for_byte_from_its_upstream_files(rel, server, manifest, tmp_path):
    entry = serve_upstream(server, manifest[rel], UPSTREAM[rel]())
    result = fd.fetch(dest=tmp_path, entries=[entry], log=quiet)
    assert (result.present, result.fetched) == (0, 1)
    assert (tmp_path / rel).read_bytes() == (MIRROR / rel).read_bytes()
    assert sorted(server.requests) == sorted(urllib.parse.urlsplit(s.url).path for s in entry.derive)
    assert files_under(tmp_path) == [rel]  # no upstream file, temporary folder or .partial left

    before = len(server.requests)
    again = fd.fetch(dest=tmp_path, entries=[entry], log=quiet)
    assert (again.present, again.fetched) == (1, 0) and len(server.requests) == before


def test_recorded_upstream_checksums_reject_other_bytes(server, manifest, tmp_path):
    """The real entry's sources, served with other bytes of the same length: the recorded SHA-256 tells them apart."""
    rel = "instruments/bfi_44.csv"
    (body,) = UPSTREAM[rel]()
    (source,) = manifest[rel].derive
    body = (body + b" " * source.size)[: source.size]  # the recorded length, other bytes
    entry = serve_upstream(server, manifest[rel], [body])
    entry = dataclasses.replace(entry, derive=(dataclasses.replace(entry.derive[0], sha256=source.sha256),))
    with pytest.raises(fd.FetchError, match=f"{rel}: sha256 .* of the file from upstream file .*questionnaires.json"):
        fd.fetch(dest=tmp_path, entries=[entry], log=quiet)
    assert files_under(tmp_path) == ["instruments"]


@pytest.mark.parametrize("fault", ["checksum", "size", "404", "cut", "result", "unreadable"])
def test_a_bad_upstream_file_raises_naming_file_and_url_and_leaves_nothing(fault, server, manifest, tmp_path):
    rel = "instruments/ipip_neo_120.csv"
    files = upstream_ipip()
    if fault == "result":  # upstream files that convert into other bytes than the manifest's, of the same length
        files[0] = files[0].replace(b"Worry about things.", b"Worry about THINGS.")
    elif fault == "unreadable":  # verified bytes that the conversion cannot read
        files[1] = b'{"factors": "none"}'
    entry = serve_upstream(server, manifest[rel], files)
    bad = entry.derive[1]  # factors.json: one upstream file arrives before it, one is still to come
    route = urllib.parse.urlsplit(bad.url).path
    body = server.routes[route][1]
    if fault == "checksum":  # same length, one byte changed: only the SHA-256 can tell
        server.routes[route] = ("ok", body[:-1] + bytes([body[-1] ^ 1]))
    elif fault == "size":
        server.routes[route] = ("ok", body + b"\n")
    elif fault == "404":
        del server.routes[route]
    elif fault == "cut":  # Content-Length promises the whole file; the connection closes halfway
        server.routes[route] = ("cut", body)
    with pytest.raises(fd.FetchError) as err:
        fd.fetch(dest=tmp_path, entries=[entry], log=quiet)
    msg = str(err.value)
    expected = {"checksum": "sha256", "size": "sends more than", "404": "HTTP 404", "cut": "closed after",
                "result": "sha256", "unreadable": "cannot rebuild it from 3 upstream files"}[fault]
    assert rel in msg and expected in msg
    assert (entry.derive[0].url if fault in ("result", "unreadable") else bad.url) in msg
    assert files_under(tmp_path) == ["instruments"]  # the folder it made; no file, .partial or temporary folder


def test_a_derived_file_from_a_hosted_mirror_is_downloaded_not_rebuilt(server, manifest, tmp_path):
    rel = "essays/essays.csv"
    entries = hosted(server, manifest, (rel,))
    assert entries[0].derive
    result = fd.fetch(dest=tmp_path, base_url=server.url + "/mirror/", entries=entries, log=quiet)
    assert result.fetched == 1 and server.requests == [f"/mirror/{rel}"]
    assert (tmp_path / rel).read_bytes() == (MIRROR / rel).read_bytes()


def test_manifest_entries_round_trip_with_their_upstream_files(manifest):
    for entry in manifest.values():
        assert fd.Entry.from_json(json.loads(json.dumps(entry.as_json()))) == entry
