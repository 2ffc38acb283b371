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
Four files the mirror derived (converted or rebuilt, so not published verbatim upstream: Essays, the BFI-44 and
IPIP-NEO-120 CSVs, 20 SODA scenarios) have no URL of their own. Their manifest entry lists, under `derive`, the
upstream files they are rebuilt from (raw GitHub files at pinned commits, each with its size and SHA-256): a fetch
downloads each of those the same way (to `.partial`, renamed only once verified, in a temporary folder beside the
file), converts them with this module's pure csv/json code into the mirror's exact bytes, and checks the result
against the entry's size and SHA-256 before writing it; nothing of a failed rebuild stays behind. A derived file
without such a recipe is an error that says what to do (copy it, or host the mirror and use --base-url); with
--base-url a derived file, like any other, is downloaded as the mirror holds it.
`hf://datasets/...` values (the paper profile) are not mirror files: lib.hub fetches them when a stage runs.
"""
from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import http.client
import io
import json
import math
import os
import posixpath
import sys
import tempfile
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

# mirror path -> how the mirror made it (no upstream file has these bytes; those in DERIVE_SOURCES are rebuilt)
DERIVED: dict[str, str] = {
    "essays/essays.csv": "rebuilt as one CSV (split column 0-9) from the fastText test folds of "
                         "hjian42/automatic-personality-prediction (Essays, Pennebaker & King 1999): rows and split "
                         "from the ten cEXT folds, each other trait's label from that trait's ten folds",
    "soda/soda_20.jsonl": "the 20 SODA scenarios (env_info, NaN written as null) of one evaluation file of "
                          "wenkai-li/Big5-Chat (SODA: allenai/soda, CC-BY-4.0)",
    "instruments/bfi_44.csv": "BFI-44 items converted to CSV from PsychoBench's questionnaires.json",
    "instruments/ipip_neo_120.csv": "IPIP-NEO-120 converted to CSV from NeuroQuestAi/five-factor-e: items from "
                                    "data/IPIP-NEO/120/questions.json, facets from its factors.json, reverse keys from "
                                    "ipipneo/reverse.py",
    "reasoning/README.md": "written for the mirror (sources, commits and how BIG5-CHAT ran each benchmark)",
}


@dataclass(frozen=True)
class Source:
    """One upstream file a derived mirror file is rebuilt from: a raw GitHub URL at a pinned commit, size, SHA-256."""
    url: str
    size: int
    sha256: str

    def as_json(self) -> dict:
        return {"url": self.url, "size": self.size, "sha256": self.sha256}


def raw_url(repo: str, commit: str, path: str) -> str:
    """The raw GitHub URL of a file of `repo` at `commit`."""
    return f"{RAW}/{repo}/{commit}/{urllib.parse.quote(path)}"


# The upstream files of each derived file, in the order its conversion (CONVERSIONS, below) takes them. Each size and
# SHA-256 was measured on the file at that commit, and the conversion of those bytes checked against the mirror's.
ESSAY_SPLITS = 10
ESSAY_TRAITS = ("cEXT", "cNEU", "cAGR", "cCON", "cOPN")  # the mirror's label columns, in order
_ESSAYS = ("hjian42/automatic-personality-prediction", "403d4dca94ca743d02880956344d9e41e80eec43",
           "huggingface/data/essays_hf/splits/")
_ESSAY_FOLDS: dict[str, tuple[int, str]] = {  # "split<k>/<trait>" -> size, sha256 of its test.ft
    "split0/cEXT": (849022, "05b5039e83b6876828442d23baa25e5a644707b06d279c3f14738617769605e2"),
    "split0/cNEU": (816014, "3ae7a72aa22330b5df00247f23228d8126a4cb4599ca409a3e98f28992158fbc"),
    "split0/cAGR": (857745, "f644df4950ee66066c134363530300aa707e7a371477deacfcfa1d1d9d5a097d"),
    "split0/cCON": (838495, "891d958f764b1c39aa9da97d1319e549348c955695abd00dc86a2954b4847c4c"),
    "split0/cOPN": (849786, "8c8c6634ccb51d25d0cf91b8aadfc05415a22ab0645f59da3b75fb5c42260537"),
    "split1/cEXT": (795070, "77a486ab72f465cae599005ab247941e0988ee8ba56d62cbb2eccbd9a5fc0859"),
    "split1/cNEU": (850078, "4e4f8db8eb54dcaa80e936be48fa4f9f6ea1c5d35d1217a019aea557ee85160c"),
    "split1/cAGR": (838854, "67248048f36bdcb9ecfea07d060ee5c30d91db7facc505e51ef55992a00a8ed0"),
    "split1/cCON": (817911, "eb020bb8e3c4d095a6da9961aa5b2018918ece8fe84d2566928f2c6fbbde6c8d"),
    "split1/cOPN": (803236, "4c2a4f8056eb4c6eb849fef389b3948f9aac8b57b053f7e451bd94d793123230"),
    "split2/cEXT": (824707, "b9e47e6b730cf55239e9ad1981101c9b21d43291598bfe0c85d6899da370c973"),
    "split2/cNEU": (784814, "351795149ed7a55803a5506755d529cb56d4356466e95d908fe8755d6b7094a1"),
    "split2/cAGR": (831647, "f5f74c3edb2187968f0a357b11f018bf1167ddf2fca57685a499d8838632050f"),
    "split2/cCON": (798568, "1a80dc51f0dac117b79cb9fe19930c6465ffb2eea5e73bc92e25d9463dc6a883"),
    "split2/cOPN": (821379, "9fb0da075ab5c8a3c813c88722745b58e4c781524a6734884171ff39533990ef"),
    "split3/cEXT": (822253, "4519d8e423e6128555664905f2445215d607c53f2efcc6636d08042e74ad027b"),
    "split3/cNEU": (819775, "5bf1a4376890ec1f128bb3f807cd06e47cdcab18b7c5c618e50df384be9718b2"),
    "split3/cAGR": (813632, "4464b280ca3b90539aa28cc02367124aaaa2e79061f98f0423a9596d7a0a0b2c"),
    "split3/cCON": (827162, "aa222cc375794426de4e6bbbe591150720a7ee0f6e45ae8b3c2135962f211e2c"),
    "split3/cOPN": (816426, "73b44c844914523c680b9f34eead3c732e7a2d4011ab5169b3976a910fff3c75"),
    "split4/cEXT": (781907, "6854db36f1814ad4df0f1d1c820284ac22829aaeb3c934a5e2ede96f3a94d17e"),
    "split4/cNEU": (830263, "77e009e9b5e64b889dabdf348f1f1aa3bac7574859a5023d6f41ad7e93b5add2"),
    "split4/cAGR": (845131, "9ed450109545644b3db3fde622c6754e238fe1a6449d94e0896e362ea8a8c6fe"),
    "split4/cCON": (802606, "a2d2b7d58c1c8fda34becedcfe27ae83bdc35487ceb5a2c26340e54269eaceaa"),
    "split4/cOPN": (825335, "5f04b3ef9b9629e5653d31fdfb3900884e5c80a69d22965a4206850260f58caf"),
    "split5/cEXT": (859872, "ff5cb07ced5e265ba604d190ae34250bdc2678193f79b235f569030504f6e940"),
    "split5/cNEU": (851373, "e7c40bb981cb8214de912e5a137c23fa5b73f83c5da42628e7ab316f73d72bae"),
    "split5/cAGR": (813658, "a844dd28f5f8ec6c120541db99f7aa95476be78a4f6e5cff9591115d614b615d"),
    "split5/cCON": (848881, "b01c10edc180228e1f612a6fd2dfefe65e8307346ffcbb9d9c7b7300d49099fe"),
    "split5/cOPN": (817918, "0d8bad830d358c1f490316c7d5c95fc43109d1a605f723003b81d521e91326f9"),
    "split6/cEXT": (819334, "60367566bc41d0477992da005cc2817bec296510993bb1c011a608ff503a4d1b"),
    "split6/cNEU": (792806, "0690867fb3c0622985552b467982fd6fb7843e0542f4772e6d569ef910485436"),
    "split6/cAGR": (761169, "cb1319eea2c5f370a0329bdf7295a7059192ed06f5c1bd2236882978117f858f"),
    "split6/cCON": (780253, "72a7367dcc9f25961ab8c2ce1cabd1397f80a8bbddbd71343fa7ddc5960f2cf7"),
    "split6/cOPN": (833769, "11349dc155240cc303cb7cb4a9c6003a203ff7e17062a0423691a6dbf0a52a7f"),
    "split7/cEXT": (820849, "c5851eaf2b20e484731d0b3d4bbc2330a4282689b9ad2b8b0e0d99f31369eb2a"),
    "split7/cNEU": (791743, "37d8fd72c3ede61b505b6585900ef5fec9a9e60893946e9d93f7d0fae98f2ce0"),
    "split7/cAGR": (813641, "66e898dfacb61c6b1cb443efd05de5a7360c183fcedf0dec033469cb43192cce"),
    "split7/cCON": (828245, "ba7ca0580bca50b912b0bf6e986e402f297cf5cfee00896b22d45ce753b3f2f3"),
    "split7/cOPN": (791410, "23a3e032ab67ce0a22e67e20e6af34b8c6d378374abf253e98a90903d39e44c4"),
    "split8/cEXT": (828098, "ace7685e0b34a2b666ab172648a56c43e87bd4912a55ca667c7f8535b573221a"),
    "split8/cNEU": (847213, "07cb4ae2fc2def59087834ed73f47ed9a8bc2918aa943101fd6948759f4fbf5d"),
    "split8/cAGR": (844737, "2462ff05fbec6f5fa4f53cf9ed1d8402f4c75601faf8197eeddb8db57a584b3f"),
    "split8/cCON": (827266, "64f25d09fb3e2f002910eabb718239dd463acf2af378c0566753bf4c06718911"),
    "split8/cOPN": (845448, "9ca696438098a8c4f64f8e0626b2671bdf280ae8c07255268c932f7d7e1ea6ec"),
    "split9/cEXT": (802973, "31dae0c37ef87c54930201b38bf70e5aa059353afe6614e858e85b584b895e9c"),
    "split9/cNEU": (820006, "0df22b9356f03a3b4f39df27fefd0775ddc3fffd0a30b6462423602027c9fffd"),
    "split9/cAGR": (783871, "61e55eef667fd9c4fcd23b4dabe1af6b7963e11c81760ffc943d1395ab19b425"),
    "split9/cCON": (834698, "7b43e7a64b1928839be16d1cb758ee6ede712e888210695137ffe48501af8ceb"),
    "split9/cOPN": (799378, "4bb1df82d861cda072a96161dd6a89fd9f33778c03e51e48769748bbfced960e"),
}
_FFE = ("NeuroQuestAi/five-factor-e", "618c85f69a19e90dd8fc9153a2126519106f0341")
_FFE_FACTORS = "38dbf6e4778f5e764e605540f3112dd2ce2c9df2"  # the last commit with data/IPIP-NEO/120/factors.json

DERIVE_SOURCES: dict[str, tuple[Source, ...]] = {
    "essays/essays.csv": tuple(
        Source(raw_url(_ESSAYS[0], _ESSAYS[1], f"{_ESSAYS[2]}split{split}/{trait}/test.ft"),
               *_ESSAY_FOLDS[f"split{split}/{trait}"])
        for split in range(ESSAY_SPLITS) for trait in ESSAY_TRAITS),
    "soda/soda_20.jsonl": (
        Source(raw_url("wenkai-li/Big5-Chat", "fb50e6a7af599c0cdb86df4e18a4d1bb89c28da8",
                       "src/profile_creation/eval_set/alpha_0.5_trait_e.jsonl"),
               174220, "cab3f12ecfc22de4880552e158c25b73b062092d0afe6cb9dc28306ae9783f63"),),
    "instruments/bfi_44.csv": (
        Source(raw_url("CUHK-ARISE/PsychoBench", "d514fb0810f4c79571b4e13e588ffe7f5daaa24f", "questionnaires.json"),
               75059, "eb5d531edd8f9815eb4495fa3de1ff1a783e2f1b5c8a90a8a527967873906826"),),
    "instruments/ipip_neo_120.csv": (
        Source(raw_url(*_FFE, "data/IPIP-NEO/120/questions.json"),
               10302, "a017f82f47be988c380b5cfa54b1f9a60e8a8eae224c5b294fcd4d4c242db3a8"),
        Source(raw_url(_FFE[0], _FFE_FACTORS, "data/IPIP-NEO/120/factors.json"),
               11880, "0b14c2ae86fbcd44ab366a6a73d1b3c644d96d5152cd14aa4bd992dd3f76bdc9"),
        Source(raw_url(*_FFE, "ipipneo/reverse.py"),
               7352, "caf29c3426dee00126834ed10f5a1940c867d974bb29cd088cdeedc63905cfa7"),
    ),
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
    derive: tuple[Source, ...] | None = None  # derived: the upstream files it is rebuilt from (None: no recipe)

    def as_json(self) -> dict:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256, "url": self.url}
        if self.member is not None:
            out["member"] = self.member
        if self.derived is not None:
            out["derived"] = self.derived
        if self.derive is not None:
            out["derive"] = [source.as_json() for source in self.derive]
        return out

    @classmethod
    def from_json(cls, raw: dict) -> Entry:
        """An entry as `as_json` wrote it (TypeError/KeyError on a malformed one)."""
        derive = raw.get("derive")
        return cls(**{**raw, "derive": None if derive is None else tuple(Source(**s) for s in derive)})


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


def source_of(rel: str) -> tuple[str | None, str | None, str | None, tuple[Source, ...] | None]:
    """(url, member, derived note, derive sources) of a mirror path; FetchError if lib/fetch_data.py records no
    source for it."""
    if rel in GITHUB_FILES:
        return raw_url(*GITHUB_FILES[rel]), None, None, None
    for folder, (repo, commit, path, inner) in ARCHIVES.items():
        if rel.startswith(folder):
            return raw_url(repo, commit, path), inner + rel[len(folder):], None, None
    if rel in DERIVED:
        return None, None, derived_note(rel), DERIVE_SOURCES.get(rel)
    raise FetchError(f"{rel}: no canonical source recorded; add it to GITHUB_FILES, ARCHIVES or DERIVED in "
                     "lib/fetch_data.py")


def derived_note(rel: str) -> str:
    """The manifest's `derived` text of a derived mirror path: how the mirror made it, and whether a fetch can."""
    if rel in DERIVE_SOURCES:
        return (f"{DERIVED[rel]}; rebuilt by lib/fetch_data.py from the upstream files in `derive` "
                f"(described in {MIRROR_README})")
    return f"{DERIVED[rel]}; not published verbatim upstream (described in {MIRROR_README})"


def build_manifest(mirror: Path) -> list[Entry]:
    """The manifest entries for every file the profiles and dvc.yaml read, measured in `mirror`."""
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise FetchError(f"data mirror not found: {mirror}")
    available = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    entries = []
    for rel in sorted(_expand(wanted(), available, f"the mirror {mirror}")):
        url, member, derived, derive = source_of(rel)
        path = mirror / rel
        entries.append(Entry(rel, path.stat().st_size, _sha256_file(path), url, member, derived, derive))
    return entries


def render_manifest(entries: list[Entry]) -> str:
    """The manifest file's text: a header, then one entry per line (stable, so regenerating gives the same bytes)."""
    about = ("Generated by `python -m lib.fetch_data --write-manifest` from the data mirror; do not edit. "
             "path: relative to data.root; url: the canonical file (member: the file inside that zip); "
             "url null: derived by the mirror, not downloadable verbatim (see `derived`); derive: the upstream "
             "files (url, size, sha256) that lib/fetch_data.py rebuilds it from.")
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
        return [Entry.from_json(e) for e in raw["entries"]]
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
# Rebuilding the derived files. A conversion takes the bytes of its upstream files (in DERIVE_SOURCES order) and
# returns the mirror file's bytes; it is plain csv/json code, so quoting, line ends and escapes are all fixed here.


def essays_csv(folds: list[bytes]) -> bytes:
    """Essays as one CSV (split,TEXT,cEXT,cNEU,cAGR,cCON,cOPN) from the fastText test folds, split 0-9 x ESSAY_TRAITS.

    Each trait was split into ten folds of its own. The rows, their order and the split column follow the cEXT folds;
    every other label is looked up by the essay's text in that trait's folds (each essay is in one fold per trait)."""
    if len(folds) != ESSAY_SPLITS * len(ESSAY_TRAITS):
        raise ValueError(f"expected {ESSAY_SPLITS * len(ESSAY_TRAITS)} folds, got {len(folds)}")
    order: list[tuple[int, str]] = []
    labels: dict[str, dict[str, str]] = {trait: {} for trait in ESSAY_TRAITS}
    for i, data in enumerate(folds):
        split, trait = i // len(ESSAY_TRAITS), ESSAY_TRAITS[i % len(ESSAY_TRAITS)]
        for label, text in _fasttext_rows(data):
            if text in labels[trait]:
                raise ValueError(f"an essay twice in the {trait} folds: {text[:60]!r}")
            labels[trait][text] = label
            if trait == ESSAY_TRAITS[0]:
                order.append((split, text))
    for trait, found in labels.items():
        if found.keys() != labels[ESSAY_TRAITS[0]].keys():
            raise ValueError(f"the {trait} folds hold other essays than the {ESSAY_TRAITS[0]} folds")
    rows = [[split, text, *(labels[trait][text] for trait in ESSAY_TRAITS)] for split, text in order]
    return _csv_bytes(["split", "TEXT", *ESSAY_TRAITS], rows)


def _fasttext_rows(data: bytes) -> list[tuple[str, str]]:
    """(label, text) of each line of a fastText file: `__label__label<0|1> <text>`, every line ending in a newline."""
    text = data.decode("utf-8")
    if not text.endswith("\n"):
        raise ValueError("a fastText file that does not end in a newline")
    rows = []
    for line in text[:-1].split("\n"):  # not splitlines(): an essay may hold other line-break characters
        tag, _, essay = line.partition(" ")
        label = tag.removeprefix("__label__label")
        if label not in ("0", "1"):
            raise ValueError(f"a fastText line without a 0/1 label: {line[:60]!r}")
        rows.append((label, essay))
    return rows


def soda_jsonl(files: list[bytes]) -> bytes:
    """The SODA scenarios of one BIG5-CHAT evaluation file as JSON lines, in the order they first appear.

    That file has a line per generated turn, each carrying its scenario (`env_info`, one per `env_idx`); pandas wrote
    a missing value as NaN, which the mirror writes as null. Otherwise json.dumps' defaults (", ", ": ", ASCII)."""
    (data,) = files
    scenarios: dict[int, dict] = {}
    for line in data.decode("utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            scenarios.setdefault(row["env_idx"], row["env_info"])
    return "".join(json.dumps({key: _nan_as_none(value) for key, value in info.items()}) + "\n"
                   for info in scenarios.values()).encode("utf-8")


def _nan_as_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def bfi_44_csv(files: list[bytes]) -> bytes:
    """BFI-44 as item,text,domain,key from PsychoBench's questionnaires.json: its "BFI" entry's items in numeric
    order, each with the category that lists it as its domain, key -1 for the items under "reverse", else 1."""
    (data,) = files
    found = [q for q in json.loads(data) if q.get("name") == "BFI"]
    if len(found) != 1:
        raise ValueError(f'expected one questionnaire named "BFI", found {len(found)}')
    bfi = found[0]
    domain = {item: category["cat_name"] for category in bfi["categories"] for item in category["cat_questions"]}
    reverse = set(bfi["reverse"])
    items = sorted((int(number), text) for number, text in bfi["questions"].items())
    rows = [[item, text, domain[item], -1 if item in reverse else 1] for item, text in items]
    return _csv_bytes(["item", "text", "domain", "key"], rows)


IPIP_FACET_CYCLE = 30  # IPIP-NEO-120's items run through its 30 facets (N1 E1 O1 A1 C1 N2 ... C6) four times


def ipip_neo_120_csv(files: list[bytes]) -> bytes:
    """IPIP-NEO-120 as item,text,domain,facet_num,facet,key from three five-factor-e files.

    questions.json gives the items and texts; factors.json each item's facet code (N1 ... C6; its first letter is the
    domain) and name, except placeholders ("key", "facet") for items 31, 61 and 91, which take the facet of the item
    at the same place in the 30-item cycle; ipipneo/reverse.py lists the reverse-keyed items (key -1) as
    IPIP_NEO_ITEMS_REVERSED_120, read as a Python literal (the code is never run)."""
    questions, factors, reverse_py = files
    facets = {int(f["id_question"]): (f["key"], f["facet"]) for f in json.loads(factors)["factors"]}
    reverse = set(_python_list(reverse_py, "IPIP_NEO_ITEMS_REVERSED_120"))
    rows = []
    for question in json.loads(questions)["questions"]:
        item = question["id"]
        code, name = _ipip_facet(facets, item)
        rows.append([item, question["text"], code[0], code, name, -1 if item in reverse else 1])
    return _csv_bytes(["item", "text", "domain", "facet_num", "facet", "key"], rows)


def _ipip_facet(facets: dict[int, tuple[str, str]], item: int) -> tuple[str, str]:
    """(facet code, facet name) of an item; a placeholder takes those of the first item at its place in the cycle."""
    for candidate in (item, (item - 1) % IPIP_FACET_CYCLE + 1):
        code, name = facets[candidate]
        if len(code) == 2 and code[0] in "NEOAC" and code[1] in "123456":
            return code, name
    raise ValueError(f"no facet for item {item} in factors.json")


def _python_list(source: bytes, name: str) -> list:
    """The value of a top-level `name = [...]` in Python source, read with ast.literal_eval (nothing is executed)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"no top-level assignment to {name}")


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    """Rows as CSV the way the mirror wrote them: Python's csv defaults (minimal quoting, CRLF line ends), UTF-8."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


CONVERSIONS: dict[str, Callable[[list[bytes]], bytes]] = {
    "essays/essays.csv": essays_csv,
    "soda/soda_20.jsonl": soda_jsonl,
    "instruments/bfi_44.csv": bfi_44_csv,
    "instruments/ipip_neo_120.csv": ipip_neo_120_csv,
}
CONVERSION_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, SyntaxError, csv.Error)


# ---------------------------------------------------------------------------------------------------------------
# Fetching


def fetch(profile: str | None = None, dest: Path | None = None, base_url: str | None = None,
          entries: list[Entry] | None = None, log: Callable[[str], None] = print) -> Result:
    """Put every selected file under `dest`, verified; FetchError listing each file that could not be (with its URL).

    A file is downloaded from its URL (or taken from its zip), or, for a derived file, rebuilt from its upstream files.

    Args:
        base_url: a hosted copy of the mirror; a file's URL is then base_url + its mirror path (derived files too:
            they are downloaded as the mirror holds them, not rebuilt).
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
            origin = _fetch_one(entry, target, base_url, archives)
        except FetchError as err:
            errors.append(str(err))
            continue
        except OSError as err:  # the destination: not writable, disk full
            errors.append(f"{entry.path}: cannot write {target}: {err}")
            continue
        result.fetched += 1
        result.fetched_bytes += entry.size
        log(f"fetched {entry.path} ({entry.size:,} bytes) {origin}")
    log(f"data in {result.dest}: {result.present} files already in place, {result.fetched} fetched "
        f"({result.fetched_bytes:,} bytes), {len(errors)} failed")
    if errors:
        raise FetchError(f"{len(errors)} of {len(entries)} data files could not be put in {result.dest}:\n"
                         + "\n".join(f"  - {e}" for e in errors))
    return result


def _fetch_one(entry: Entry, target: Path, base_url: str | None, archives: dict[str, bytes | FetchError]) -> str:
    """Put one file in `<target>.partial`, verify it, rename it to `target`; returns where it came from ("from URL",
    "rebuilt from ...")."""
    if not base_url and entry.url is None and entry.derive is None:
        raise FetchError(f"{entry.path}: cannot be downloaded: {entry.derived or 'no URL recorded'}. Copy it from a "
                         f"machine that has the mirror to {target}, or host a copy of the mirror and pass --base-url")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        if base_url:
            url = base_url.rstrip("/") + "/" + urllib.parse.quote(entry.path)
            origin = f"from {url}"
            size, digest = _download(url, partial, entry.path, entry.size)
        elif entry.url is None:
            origin = f"rebuilt from {_upstream_files(entry.derive or ())}"
            size, digest = _rebuild(entry, target, partial)
        elif entry.member:
            origin = f"from {entry.url} (member {entry.member})"
            size, digest = _extract(entry.path, entry.url, entry.member, partial, archives)
        else:
            origin = f"from {entry.url}"
            size, digest = _download(entry.url, partial, entry.path, entry.size)
        _verify(entry.path, origin, size, digest, entry)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return origin


def _verify(what: str, origin: str, size: int, digest: str, want: Entry | Source) -> None:
    """FetchError unless a file's size and SHA-256 are those the manifest records for it."""
    if size != want.size:
        raise FetchError(f"{what}: got {size:,} bytes {origin}, the manifest records {want.size:,}")
    if digest != want.sha256:
        raise FetchError(f"{what}: sha256 {digest} of the file {origin} is not the manifest's {want.sha256}")


def _extract(what: str, url: str, member: str, partial: Path,
             archives: dict[str, bytes | FetchError]) -> tuple[int, str]:
    """Write a zip's member into `partial` (each zip downloaded once per run); (size, sha256)."""
    if url not in archives:
        try:
            archives[url] = _get_archive(url)
        except FetchError as err:
            archives[url] = err  # tried once per run, not once per member
    archive = archives[url]
    if isinstance(archive, FetchError):
        raise FetchError(f"{what}: {archive}")
    try:
        data = zipfile.ZipFile(io.BytesIO(archive)).read(member)
    except (zipfile.BadZipFile, KeyError) as err:
        raise FetchError(f"{what}: {err} in {url} (member {member})") from None
    partial.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def _rebuild(entry: Entry, target: Path, partial: Path) -> tuple[int, str]:
    """Download a derived entry's upstream files (each verified) and write their conversion into `partial`.

    The upstream files go to a temporary folder beside `target`, removed whatever happens; (size, sha256)."""
    convert = CONVERSIONS.get(entry.path)
    if convert is None:
        raise FetchError(f"{entry.path}: the manifest lists upstream files for it, but lib/fetch_data.py has no "
                         "conversion for it (CONVERSIONS)")
    sources = entry.derive or ()
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.sources-", dir=target.parent) as tmp:
        files = [_fetch_source(entry.path, source, Path(tmp) / str(i)) for i, source in enumerate(sources)]
        try:
            data = convert([path.read_bytes() for path in files])
        except CONVERSION_ERRORS as err:
            raise FetchError(f"{entry.path}: cannot rebuild it from {_upstream_files(sources)}: {err!r}") from None
    partial.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def _fetch_source(what: str, source: Source, dest: Path) -> Path:
    """Download one upstream file of `what` to `<dest>.partial`, verify it, rename it to `dest`."""
    partial = dest.with_name(dest.name + ".partial")
    try:
        size, digest = _download(source.url, partial, what, source.size)
        _verify(what, f"from upstream file {source.url}", size, digest, source)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def _upstream_files(sources: tuple[Source, ...]) -> str:
    """A derived file's upstream files, for messages: how many, and the first URL."""
    if not sources:
        return "no upstream files"
    plural, more = ("s", f" and {len(sources) - 1} more") if len(sources) > 1 else ("", "")
    return f"{len(sources)} upstream file{plural} ({sources[0].url}{more})"


def _download(url: str, partial: Path, what: str, limit: int) -> tuple[int, str]:
    """Stream a URL into `partial`; (bytes received, sha256). FetchError naming `what` and the URL on HTTP errors,
    cut connections and bodies longer than `limit` (the size the manifest records)."""
    digest, size = hashlib.sha256(), 0
    with partial.open("wb") as fh:  # an unwritable destination is an OSError for the caller, not a download error
        try:
            with _open(url) as resp:
                declared = resp.headers.get("Content-Length")
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise FetchError(f"{what}: {url} sends more than the manifest's {limit:,} bytes")
        except urllib.error.HTTPError as err:
            raise FetchError(f"{what}: HTTP {err.code} {err.reason} from {url}") from None
        except (OSError, http.client.HTTPException) as err:
            raise FetchError(f"{what}: download from {url} failed after {size:,} bytes: {err!r}") from None
        fh.flush()
        os.fsync(fh.fileno())
    if declared is not None and declared.isdigit() and size != int(declared):
        raise FetchError(f"{what}: connection to {url} closed after {size:,} of {int(declared):,} bytes")
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
            derived = [e for e in entries if e.url is None]
            print(f"{_rel(MANIFEST_FILE)}: {len(entries)} files, {sum(e.size for e in entries):,} bytes "
                  f"({len(derived)} derived, {sum(e.derive is not None for e in derived)} of them rebuilt from "
                  f"upstream) from {mirror}")
        else:
            fetch(args.profile, args.dest, args.base_url)
    except (FetchError, config.ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
