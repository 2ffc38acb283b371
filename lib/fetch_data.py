"""The data set-up step: put every mirror file the profiles read under the data root, checked against a SHA-256.

The profiles read their data from `data.root` (`../shared/data`, the offline mirror). A clone on a workstation or a
laptop has no mirror, so this fetches the files the profiles and dvc.yaml read from their canonical public homes
(raw GitHub files at pinned commits; two zip archives for MMLU and Social IQa) into that folder:

    python -m lib.fetch_data                      # every file of lib/data_manifest.json into ../shared/data
    python -m lib.fetch_data --profile cpu        # only what the cpu profile and dvc.yaml read
    python -m lib.fetch_data --base-url https://example.org/mirror/   # a hosted copy: base-url + mirror path
    python -m lib.fetch_data --write-manifest     # regenerate lib/data_manifest.json from the mirror

A file already there with the recorded size and SHA-256 is left alone, so on a machine with the mirror (and in CI)
nothing touches the network. A download goes to `<file>.partial` and is renamed only after its size and SHA-256
match, so a 404, a wrong checksum or a connection cut mid-file leaves neither a corrupt file nor a `.partial`.
Files the mirror derived (converted or rebuilt, so not published verbatim upstream) have no URL: fetching one is an
error that says where the derivation is described and what to do (copy it, or host the mirror and use --base-url).
`hf://datasets/...` values (the paper profile) are not mirror files: lib.hub fetches them when a stage runs.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import posixpath
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lib import config, hub

MANIFEST_FILE = config.ROOT / "lib" / "data_manifest.json"
DVC_FILE = config.ROOT / "dvc.yaml"
DVC_PREFIX = "../shared/data/"  # how dvc.yaml names a mirror file (relative to the repo root)
MIRROR_README = "../shared/data/README.md"
TIMEOUT_S = 60
CHUNK = 1 << 20

# ---------------------------------------------------------------------------------------------------------------
# Canonical sources. Each file below was checked byte for byte against the mirror (its git blob id at the commit).

RAW = "https://raw.githubusercontent.com"
_B5 = ("wenkai-li/llm_personality", "10825cb7fbb6bce1d190fbb616a0def0cfa1a67e",
       "llm_bigfive/data_construction_baseline/classifier_on_posts/baselines/")  # BIG5-CHAT's released replies
_HP = ("Samrudhi1229/Harry_Potter---SQL", "327d9641ba9b3e3f6c41c9316b247a1bd71c6f99", "")
_XP = ("HLTCHKUST/Xpersona", "1da049a1bbf3b01548f98cc23ba75ef871416e50", "dataset/")
_SPC = ("google-research-datasets/Synthetic-Persona-Chat", "1f367a0f05d388ca96ebbbc9e5752ab19ac76510", "data/")
_GSM = ("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "")
_TQA = ("SimarBhatiaSB7/TruthX", "9f9e3d00dd0114d8adda7a86757f01671be59d5f", "TruthfulQA/")

# mirror path -> (GitHub repo, commit, path in the repo)
GITHUB_FILES: dict[str, tuple[str, str, str]] = {
    **{f"big5chat/{name}": (_B5[0], _B5[1], _B5[2] + name)
       for name in ("big5_chat_sampled.csv", "human_eval_big5_chat.csv", "llama3_70b.jsonl")},
    **{f"characters/hp_movies_{stem}.csv": (_HP[0], _HP[1], f"{stem}.csv")
       for stem in ("Dialogue", "Characters", "Chapters", "Movies", "Places")},
    "friends_persona/friends_personality.csv": ("emorynlp/personality-detection",
                                                "3ec08a58dc7c708c5dfc314b3bff8f5808786928",
                                                "CSV/friends-personality.csv"),
    **{f"personachat/xpersona_en_{split}.json": (_XP[0], _XP[1], f"{_XP[2]}En_persona_{split}.json")
       for split in ("valid", "test")},
    **{f"personachat/synthetic_persona_chat_{split}.csv":
       (_SPC[0], _SPC[1], f"{_SPC[2]}Synthetic-Persona-Chat_{split}.csv") for split in ("valid", "test")},
    "reasoning/gsm8k/test.jsonl": (_GSM[0], _GSM[1], "grade_school_math/data/test.jsonl"),
    "reasoning/gsm8k/train.jsonl": (_GSM[0], _GSM[1], "grade_school_math/data/train.jsonl"),
    "reasoning/gsm8k/LICENSE": (_GSM[0], _GSM[1], "LICENSE"),
    "reasoning/mathqa/test.json": ("Liya-2/Project_MathQA", "24c1eb20518bbc9ce9cfbafef27643cbe5d72eba",
                                   "dataset/MathQA/test.json"),
    **{f"reasoning/truthfulqa/{rel}": (_TQA[0], _TQA[1], _TQA[2] + rel)
       for rel in ("LICENSE", "TruthfulQA.csv", "data/mc_task.json", "data/v0/TruthfulQA.csv", "data/v0/mc_task.json")},
    "reasoning/commonsense_qa/dev_rand_split.jsonl": ("kojima-takeshi188/zero_shot_cot",
                                                      "5ef330fcdeec0cd26aee27943504f91f8ec1c33c",
                                                      "dataset/CommonsenseQA/dev_rand_split.jsonl"),
    **{f"reasoning/piqa/{name}": ("ybisk/ybisk.github.io", "21edab439af693b961be2f069e8690a88d3b4e37",
                                  f"piqa/data/{name}") for name in ("valid.jsonl", "valid-labels.lst")},
}

# mirror folder -> (GitHub repo, commit, zip in the repo, member prefix): the mirror unpacked these zips unchanged.
ARCHIVES: dict[str, tuple[str, str, str, str]] = {
    "reasoning/mmlu/": ("wenkai-li/llm_personality", "a1739c027c54c29846a3df383399361a8cbd5ffd",
                        "LLaMA-Factory/evaluation/mmlu/mmlu.zip", ""),
    "reasoning/social_iqa/": ("kashrest/socialiqa-nlp244", "3d4a82ed0b3df82e14769d94c2e9d5dca291bd33",
                              "socialiqa-train-dev.zip", "socialiqa-train-dev/"),
}

# mirror path -> how the mirror made it (no upstream file has these bytes, so there is nothing to download)
DERIVED: dict[str, str] = {
    "essays/essays.csv": "rebuilt as one CSV (split column 0-9) from the ten fold files of "
                         "hjian42/automatic-personality-prediction (Essays, Pennebaker & King 1999)",
    "soda/soda_20.jsonl": "20 SODA scenarios taken from the evaluation files of wenkai-li/Big5-Chat "
                          "(SODA: allenai/soda, CC-BY-4.0)",
    "instruments/bfi_44.csv": "BFI-44 items converted to CSV from PsychoBench's questionnaires.json",
    "instruments/ipip_neo_120.csv": "IPIP-NEO-120 converted to CSV from NeuroQuestAi/five-factor-e's JSON item "
                                    "files (data/IPIP-NEO/120/)",
    "reasoning/README.md": "written for the mirror (sources, commits and how BIG5-CHAT ran each benchmark)",
}

# What each reasoning task reads under `reasoning.big5chat.data_dir` (lib/big5chat/reasoning.py load_items; a
# trailing "/" is a folder: every file under it). tests/test_fetch_data.py checks this against the files it opens.
REASONING_FILES: dict[str, tuple[str, ...]] = {
    "gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl"),
    "mathqa": ("mathqa/test.json",),
    "truthfulqa_mc1": ("truthfulqa/data/v0/mc_task.json",),
    "truthfulqa_mc2": ("truthfulqa/data/v0/mc_task.json",),
    "commonsense_qa": ("commonsense_qa/dev_rand_split.jsonl",),
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "social_iqa": ("social_iqa/dev.jsonl", "social_iqa/dev-labels.lst"),
    "mmlu": ("mmlu/data/test/", "mmlu/data/dev/"),
}


class FetchError(RuntimeError):
    """A data file that could not be put in place: the message names the file and, where there is one, the URL."""


@dataclass(frozen=True)
class Entry:
    """One file of lib/data_manifest.json."""
    path: str  # relative to the data root (the mirror), with "/"
    size: int
    sha256: str
    url: str | None  # None: derived, see `derived`
    member: str | None = None  # the file inside the zip at `url`
    derived: str | None = None

    def as_json(self) -> dict:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256, "url": self.url}
        if self.member is not None:
            out["member"] = self.member
        if self.derived is not None:
            out["derived"] = self.derived
        return out


@dataclass
class Result:
    """What one run did: files already in place, files downloaded, and the destination."""
    dest: Path
    present: int = 0
    fetched: int = 0
    fetched_bytes: int = 0


# ---------------------------------------------------------------------------------------------------------------
# Which files the profiles read


def profile_files(profile: str) -> dict[str, str]:
    """Mirror paths a profile's params name, {path: params key}; a path ending in "/" is a folder (all its files).

    Every `data-path` leaf of params/schema.yaml, plus the values that name mirror data in another form: the film
    tables' folder, the questionnaires, the PersonaChat files of 12_eval_pchat and the reasoning benchmarks. The
    params file is read as it is (a stage validates it with lib.config.load), so a set-up step is never blocked by
    a key that a stage would reject; a key missing here names no file."""
    from lib.films import HP_FILES
    from lib.psychometrics import INSTRUMENTS

    cfg = _params(profile)
    where = f"params/{profile}.yaml"
    found: dict[str, str] = {}

    def add(rel: Any, key: str) -> None:
        if rel is None or hub.is_hub_uri(rel):  # null, or a Hub file that lib.hub fetches when the stage runs
            return
        if not isinstance(rel, str) or not rel.strip():
            raise FetchError(f"{where}: {key} = {rel!r} is not a path in the data mirror")
        folder = rel.endswith("/")
        rel = posixpath.normpath(rel)
        if rel.startswith(("../", "/")):
            raise FetchError(f"{where}: {key} = {rel!r} points outside the data root")
        found.setdefault(rel + "/" if folder else rel, key)

    def walk(node: Any, shape: Any, keys: tuple) -> None:
        if isinstance(shape, dict):
            for sub, sub_shape in shape.items():
                if isinstance(node, dict) and sub in node:
                    walk(node[sub], sub_shape, keys + (sub,))
        elif shape.file == "data-path":
            add(node, ".".join(keys))

    walk(cfg, config.schema(), ())
    for key in ("scrape.dpg.hp_dir", "scrape.persllm.hp_dir"):
        if (folder := _get(cfg, key)) is not None:
            for stem in HP_FILES:
                add(f"{folder}/hp_movies_{stem}.csv", key)
    for i, rel in enumerate(_get(cfg, "eval.pchat.personachat_paths") or []):
        add(rel, f"eval.pchat.personachat_paths[{i}]")
    for key in ("generate.big5chat.instruments", "generate.big5chat.generation.instruments"):
        for name in _get(cfg, key) or []:
            if name not in INSTRUMENTS:
                raise FetchError(f"{where}: {key} names unknown instrument {name!r}")
            add(INSTRUMENTS[name].path, key)
    folder = _get(cfg, "reasoning.big5chat.data_dir")
    for task in (_get(cfg, "reasoning.big5chat.tasks") or []) if folder is not None else []:
        if task not in REASONING_FILES:
            raise FetchError(f"{where}: reasoning.big5chat.tasks names {task!r}, which lib/fetch_data.py "
                             "REASONING_FILES does not know")
        for rel in REASONING_FILES[task]:
            add(f"{folder}/{rel}", "reasoning.big5chat.tasks")
    return found


def _params(profile: str) -> dict:
    """A profile's params file as written (lib.config.ParamsError if it is missing or not a YAML mapping)."""
    path = config.profile_path(profile)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise config.ParamsError(f"{_rel(path)}: cannot read: {err}") from None
    if not isinstance(cfg, dict):
        raise config.ParamsError(f"{_rel(path)}: expected a mapping at the top level")
    return cfg


def _get(cfg: dict, key: str) -> Any:
    """The value at a dotted key, or None where any part is missing."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def dvc_files(dvc_file: Path = DVC_FILE) -> dict[str, str]:
    """Mirror paths that dvc.yaml's stages list as deps (`../shared/data/...`), {path: stage}."""
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    found: dict[str, str] = {}
    for name, stage in stages.items():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for dep in body.get("deps", []) or []:
            for path in (dep if isinstance(dep, dict) else [dep]):
                if isinstance(path, str) and path.startswith(DVC_PREFIX):
                    found.setdefault(posixpath.normpath(path[len(DVC_PREFIX):]), f"dvc.yaml stage {name}")
    return found


def wanted(profiles: tuple[str, ...] = config.PROFILES) -> dict[str, str]:
    """The mirror paths (files, or folders ending in "/") that the profiles and dvc.yaml read, {path: who reads it}."""
    found: dict[str, str] = {}
    for profile in profiles:
        for rel, key in profile_files(profile).items():
            found.setdefault(rel, f"params/{profile}.yaml: {key}")
    for rel, who in dvc_files().items():
        found.setdefault(rel, who)
    return found


def _expand(paths: dict[str, str], available: list[str], what: str) -> dict[str, str]:
    """Files for wanted paths: a file as it is, a folder (or a dvc.yaml dep that is a folder) as every file under it."""
    files: dict[str, str] = {}
    have = set(available)
    for rel, who in paths.items():
        prefix = rel if rel.endswith("/") else rel + "/"
        under = [f for f in available if f.startswith(prefix)]
        if rel in have:
            files.setdefault(rel, who)
        elif under:
            for f in under:
                files.setdefault(f, who)
        else:
            raise FetchError(f"{who} reads {rel}, which {what} does not hold")
    return files


# ---------------------------------------------------------------------------------------------------------------
# The manifest


def source_of(rel: str) -> tuple[str | None, str | None, str | None]:
    """(url, member, derived note) of a mirror path; FetchError if lib/fetch_data.py records no source for it."""
    if rel in GITHUB_FILES:
        repo, commit, path = GITHUB_FILES[rel]
        return f"{RAW}/{repo}/{commit}/{urllib.parse.quote(path)}", None, None
    for folder, (repo, commit, path, inner) in ARCHIVES.items():
        if rel.startswith(folder):
            return f"{RAW}/{repo}/{commit}/{urllib.parse.quote(path)}", inner + rel[len(folder):], None
    if rel in DERIVED:
        return None, None, f"{DERIVED[rel]}; not published verbatim upstream (described in {MIRROR_README})"
    raise FetchError(f"{rel}: no canonical source recorded; add it to GITHUB_FILES, ARCHIVES or DERIVED in "
                     "lib/fetch_data.py")


def build_manifest(mirror: Path) -> list[Entry]:
    """The manifest entries for every file the profiles and dvc.yaml read, measured in `mirror`."""
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise FetchError(f"data mirror not found: {mirror}")
    available = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    entries = []
    for rel in sorted(_expand(wanted(), available, f"the mirror {mirror}")):
        url, member, derived = source_of(rel)
        path = mirror / rel
        entries.append(Entry(rel, path.stat().st_size, _sha256_file(path), url, member, derived))
    return entries


def render_manifest(entries: list[Entry]) -> str:
    """The manifest file's text: a header, then one entry per line (stable, so regenerating gives the same bytes)."""
    about = ("Generated by `python -m lib.fetch_data --write-manifest` from the data mirror; do not edit. "
             "path: relative to data.root; url: the canonical file (member: the file inside that zip); "
             "url null: derived by the mirror, not downloadable verbatim (see `derived`).")
    rows = [json.dumps(e.as_json(), ensure_ascii=False) for e in entries]
    return "\n".join(["{", f'  "about": {json.dumps(about)},', f'  "files": {len(entries)},',
                      f'  "bytes": {sum(e.size for e in entries)},', '  "entries": [',
                      ",\n".join(f"    {row}" for row in rows), "  ]", "}", ""])


def write_manifest(mirror: Path, out: Path = MANIFEST_FILE) -> list[Entry]:
    """Regenerate lib/data_manifest.json from the mirror."""
    entries = build_manifest(mirror)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(render_manifest(entries), encoding="utf-8")
    os.replace(partial, out)
    return entries


def load_manifest(path: Path = MANIFEST_FILE) -> list[Entry]:
    """The entries of lib/data_manifest.json."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return [Entry(**e) for e in raw["entries"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FetchError(f"{_rel(path)}: cannot read the data manifest: {err}") from None


def select(entries: list[Entry], profile: str | None) -> list[Entry]:
    """The entries a profile needs (its params and dvc.yaml's deps); every entry when profile is None."""
    if profile is None:
        return list(entries)
    files = _expand(wanted((profile,)), [e.path for e in entries], _rel(MANIFEST_FILE) +
                    " (regenerate it: python -m lib.fetch_data --write-manifest on a machine with the mirror)")
    return [e for e in entries if e.path in files]


def default_dest(profile: str | None = None) -> Path:
    """The data root of a profile (the active one when None): where the stages read the mirror."""
    profile = profile or config.active_profile()
    root = _get(_params(profile), "data.root")
    if not isinstance(root, str):
        raise config.ParamsError(f"params/{profile}.yaml: data.root = {root!r}; expected a path (pass --dest)")
    return (config.ROOT / root).resolve()


# ---------------------------------------------------------------------------------------------------------------
# Fetching


def fetch(profile: str | None = None, dest: Path | None = None, base_url: str | None = None,
          entries: list[Entry] | None = None, log: Callable[[str], None] = print) -> Result:
    """Put every selected file under `dest`, verified; FetchError listing each file that could not be (with its URL).

    Args:
        base_url: a hosted copy of the mirror; a file's URL is then base_url + its mirror path (derived files too).
        entries: the manifest's entries (default: lib/data_manifest.json).
    """
    entries = select(load_manifest() if entries is None else entries, profile)
    result = Result(dest=Path(dest) if dest is not None else default_dest(profile))
    archives: dict[str, bytes | FetchError] = {}  # zips downloaded in this run (or why not), by URL
    errors = []
    for entry in entries:
        target = result.dest / entry.path
        if target.is_file():
            if _matches(target, entry):
                result.present += 1
                continue
            log(f"{entry.path}: the file in {result.dest} differs from the manifest's size/sha256; fetching it again")
        try:
            url = _fetch_one(entry, target, base_url, archives)
        except FetchError as err:
            errors.append(str(err))
            continue
        except OSError as err:  # the destination: not writable, disk full
            errors.append(f"{entry.path}: cannot write {target}: {err}")
            continue
        result.fetched += 1
        result.fetched_bytes += entry.size
        log(f"fetched {entry.path} ({entry.size:,} bytes) from {url}")
    log(f"data in {result.dest}: {result.present} files already in place, {result.fetched} fetched "
        f"({result.fetched_bytes:,} bytes), {len(errors)} failed")
    if errors:
        raise FetchError(f"{len(errors)} of {len(entries)} data files could not be put in {result.dest}:\n"
                         + "\n".join(f"  - {e}" for e in errors))
    return result


def _fetch_one(entry: Entry, target: Path, base_url: str | None, archives: dict[str, bytes | FetchError]) -> str:
    """Download one file to `<target>.partial`, verify it, rename it to `target`; returns the URL used."""
    if base_url:
        url = base_url.rstrip("/") + "/" + urllib.parse.quote(entry.path)
    elif entry.url is None:
        raise FetchError(f"{entry.path}: cannot be downloaded: {entry.derived or 'no URL recorded'}. Copy it from a "
                         f"machine that has the mirror to {target}, or host a copy of the mirror and pass --base-url")
    else:
        url = entry.url
    where = f"{url} (member {entry.member})" if entry.member and not base_url else url
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        if entry.member and not base_url:
            if url not in archives:
                try:
                    archives[url] = _get_archive(url)
                except FetchError as err:
                    archives[url] = err  # tried once per run, not once per member
            if isinstance(archives[url], FetchError):
                raise FetchError(f"{entry.path}: {archives[url]}")
            try:
                data = zipfile.ZipFile(io.BytesIO(archives[url])).read(entry.member)
            except (zipfile.BadZipFile, KeyError) as err:
                raise FetchError(f"{entry.path}: {err} in {where}") from None
            partial.write_bytes(data)
            size, digest = len(data), hashlib.sha256(data).hexdigest()
        else:
            size, digest = _download(url, partial, entry)
        if size != entry.size:
            raise FetchError(f"{entry.path}: got {size:,} bytes from {where}, the manifest records {entry.size:,}")
        if digest != entry.sha256:
            raise FetchError(f"{entry.path}: sha256 {digest} of the download from {where} is not the manifest's "
                             f"{entry.sha256}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return where


def _download(url: str, partial: Path, entry: Entry) -> tuple[int, str]:
    """Stream a URL into `partial`; (bytes received, sha256). FetchError on HTTP errors and cut connections."""
    digest, size = hashlib.sha256(), 0
    with partial.open("wb") as fh:  # an unwritable destination is an OSError for the caller, not a download error
        try:
            with _open(url) as resp:
                declared = resp.headers.get("Content-Length")
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if size > entry.size:
                        raise FetchError(f"{entry.path}: {url} sends more than the manifest's {entry.size:,} bytes")
        except urllib.error.HTTPError as err:
            raise FetchError(f"{entry.path}: HTTP {err.code} {err.reason} from {url}") from None
        except (OSError, http.client.HTTPException) as err:
            raise FetchError(f"{entry.path}: download from {url} failed after {size:,} bytes: {err!r}") from None
        fh.flush()
        os.fsync(fh.fileno())
    if declared is not None and declared.isdigit() and size != int(declared):
        raise FetchError(f"{entry.path}: connection to {url} closed after {size:,} of {int(declared):,} bytes")
    return size, digest.hexdigest()


def _get_archive(url: str) -> bytes:
    """A whole (small) archive in memory; FetchError naming the URL."""
    try:
        with _open(url) as resp:
            data = resp.read()
            declared = resp.headers.get("Content-Length")
    except urllib.error.HTTPError as err:
        raise FetchError(f"HTTP {err.code} {err.reason} from {url}") from None
    except (OSError, http.client.HTTPException) as err:
        raise FetchError(f"download from {url} failed: {err!r}") from None
    if declared is not None and declared.isdigit() and len(data) != int(declared):
        raise FetchError(f"connection to {url} closed after {len(data):,} of {int(declared):,} bytes")
    return data


def _open(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": "persona-replication lib.fetch_data"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _matches(path: Path, entry: Entry) -> bool:
    return path.stat().st_size == entry.size and _sha256_file(path) == entry.sha256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _rel(path: Path) -> str:
    try:
        return str(Path(path).relative_to(config.ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch the data (default), or --write-manifest."""
    ap = argparse.ArgumentParser(prog="python -m lib.fetch_data", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=config.PROFILES, help="only the files this profile (and dvc.yaml) reads; "
                    "default: every file of lib/data_manifest.json")
    ap.add_argument("--dest", type=Path, help="the data root to fill (with --write-manifest: the mirror to read); "
                    "default: data.root of the profile (the active one): ../shared/data")
    ap.add_argument("--base-url", help="a hosted copy of the mirror: a file's URL is BASE_URL/<mirror path>")
    ap.add_argument("--write-manifest", action="store_true", help="regenerate lib/data_manifest.json from the mirror")
    args = ap.parse_args(argv)
    try:
        if args.write_manifest:
            mirror = args.dest or default_dest(args.profile)
            entries = write_manifest(mirror)
            print(f"{_rel(MANIFEST_FILE)}: {len(entries)} files, {sum(e.size for e in entries):,} bytes "
                  f"({sum(e.url is None for e in entries)} derived) from {mirror}")
        else:
            fetch(args.profile, args.dest, args.base_url)
    except (FetchError, config.ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
