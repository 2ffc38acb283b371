"""The data set-up step (lib/fetch_data.py) against a local HTTP server, and its manifest against the mirror.

The server is a thread serving a temp copy of a few small mirror files; nothing here touches the network.
"""
import dataclasses
import io
import os
import sys
import threading
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


def test_derived_file_without_base_url_is_an_error_that_says_what_to_do(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(fd, "_open", lambda url: pytest.fail(f"no download expected, got {url}"))
    with pytest.raises(fd.FetchError) as err:
        fd.fetch(dest=tmp_path, entries=[manifest["instruments/bfi_44.csv"]], log=quiet)
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
        else:
            assert e.url.startswith(fd.RAW + "/") and len(e.url.split("/")[5]) == 40, e.url  # a pinned commit


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
