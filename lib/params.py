"""The params files DVC reads, generated from one base file and a small override per profile.

    params/base.yaml             every key at the papers' values, each commented once: the value's source
    params/profiles/paper.yaml   extends base: the paper profile (nothing to change: it is the base)
    params/profiles/cpu.yaml     extends base: what the cpu profile changes, each line with why
    params/profiles/tiny.yaml    extends cpu: what the tests shrink further

    python -m lib.params             # write params/{paper,cpu,tiny}.yaml (DVC reads these, key by key)
    python -m lib.params --check     # exit 1 naming every written file that is out of date

An override names what it extends (`extends: base` or a profile) and is merged into it key by key: a mapping into
the mapping, anything else (a scalar, a list) replaces the value, and `!unset` removes a key (a trainer that counts
`max_steps` instead of the paper's `num_train_epochs`). A top-level key starting with `_` holds YAML anchors for
blocks a file repeats (`&teacher`, then `<<: *teacher`) and is not written out.

Every line of a written file keeps the comment of the line it comes from. A value an override changes takes the
override's comment, or, where the override has none, `# paper: <the base's value>`; so the paper's value and the
reason a profile departs from it are each written once, where the value is set.
"""
from __future__ import annotations

import argparse
import copy
import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import YAMLError

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params"
BASE = PARAMS / "base.yaml"
PROFILES_DIR = PARAMS / "profiles"
PROFILES = ("paper", "cpu", "tiny")  # in the order they extend one another
COMMENT_COLUMN = 40
UNSET = "!unset"


class ParamsSourceError(ValueError):
    """A base or override file that cannot be merged (names the file and the key)."""


def _yaml() -> YAML:
    y = YAML()
    y.width = 4096  # flow mappings stay on one line (wrapping them leaves trailing spaces)
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _read(path: Path) -> CommentedMap:
    try:
        data = _yaml().load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParamsSourceError(f"{_rel(path)}: cannot read ({exc})") from None
    except YAMLError as exc:
        raise ParamsSourceError(f"{_rel(path)}: not valid YAML ({exc})") from None
    if not isinstance(data, CommentedMap):
        raise ParamsSourceError(f"{_rel(path)}: expected a mapping at the top")
    return data


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _is_unset(value: Any) -> bool:
    return isinstance(value, TaggedScalar) and str(value.tag) == UNSET


def _comment(node: CommentedMap, key: str) -> str | None:
    """The end-of-line comment on `key` (its continuation lines included), without trailing blank lines."""
    item = node.ca.items.get(key)
    token = item[2] if item and len(item) > 2 else None
    if token is None or not token.value.lstrip().startswith("#"):
        return None
    return token.value.rstrip("\n")


def _blank_lines(node: CommentedMap, key: str) -> int:
    """How many blank lines follow `key`'s line (ruamel keeps them in the key's comment token)."""
    item = node.ca.items.get(key)
    token = item[2] if item and len(item) > 2 else None
    if token is None or not token.value:
        return 0
    return max(0, len(token.value) - len(token.value.rstrip("\n")) - 1)  # the first newline ends the line itself


def _set_comment(node: CommentedMap, key: str, text: str | None, blank: int,
                 like: CommentedMap | None = None, like_key: str | None = None) -> None:
    """Replace `key`'s end-of-line comment with `text` (None: none), keeping `blank` blank lines after it; at the
    column of `like[like_key]`'s comment when given (the line it comes from), else at COMMENT_COLUMN."""
    node.ca.items.pop(key, None)
    if text is None and not blank:
        return
    item = like.ca.items.get(like_key) if like is not None else None
    token = item[2] if item and len(item) > 2 and item[2] is not None else None
    if token is not None and text is not None and token.value.rstrip("\n") == text:
        copied = copy.deepcopy(item)
        copied[2].value = text + "\n" + "\n" * blank
        node.ca.items[key] = copied
        return
    node.yaml_add_eol_comment("# x", key, column=COMMENT_COLUMN if text else 0)  # a comment slot, then its text
    node.ca.items[key][2].value = (text + "\n" if text else "\n") + "\n" * blank


def _flat(value: Any) -> str:
    """A value as one short line for a `# paper:` comment."""
    if isinstance(value, (dict, list)):
        out = io.StringIO()
        y = _yaml()
        y.default_flow_style = True
        y.dump(_plain(value), out)
        text = " ".join(out.getvalue().split())
    else:
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def merge(base: CommentedMap, override: CommentedMap, paper: CommentedMap | None, where: str, keys: tuple = ()) -> None:
    """Merge `override` into `base` in place (see the module doc). `paper`: the same node of the base file, for the
    `# paper:` comment of a value the override sets without a comment of its own."""
    for key, value in override.items():
        at = ".".join((*keys, str(key)))
        if not keys and str(key).startswith("_"):
            continue
        if _is_unset(value):
            if key not in base:
                raise ParamsSourceError(f"{where}: {at}: !unset of a key that is not there")
            del base[key]
            continue
        blank = _blank_lines(base, key) if key in base else 0
        sub_paper = paper.get(key) if isinstance(paper, dict) else None
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, sub_paper if isinstance(sub_paper, dict) else None, where, (*keys, key))
            if _comment(override, key) is not None:
                _set_comment(base, key, _comment(override, key), blank, override, key)
            continue
        base[key] = _detach(value)
        text = _comment(override, key)
        if text is None:
            text = f"# paper: {_flat(sub_paper)}" if isinstance(paper, dict) and key in paper else "# paper: not set"
        _set_comment(base, key, text, blank, override, key)


def _detach(value: Any) -> Any:
    """A copy of an override's value without its anchors or merge keys (written out in full)."""
    if isinstance(value, dict):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _detach(v)
            if isinstance(value, CommentedMap):
                _set_comment(out, k, _comment(value, k), _blank_lines(value, k), value, k)
        if isinstance(value, CommentedMap) and value.fa.flow_style():
            out.fa.set_flow_style()
        return out
    if isinstance(value, list):
        out = CommentedSeq(_detach(v) for v in value)
        if isinstance(value, CommentedSeq) and value.fa.flow_style():
            out.fa.set_flow_style()
        return out
    return copy.deepcopy(value)


def _expand(node: Any) -> Any:
    """The base with merge keys (`<<: *anchor`) written out and the `_` anchor blocks dropped."""
    out = _detach(node)
    for key in [k for k in out if str(k).startswith("_")]:
        del out[key]
    return out


def _extends(override: CommentedMap, path: Path) -> str:
    parent = override.get("extends")
    if parent != "base" and parent not in PROFILES:
        raise ParamsSourceError(f"{_rel(path)}: extends: {parent!r}; expected base or one of {list(PROFILES)}")
    return parent


def build(profile: str, base_path: Path = BASE, profiles_dir: Path = PROFILES_DIR, _seen: tuple = ()) -> CommentedMap:
    """The merged params of `profile` (comments included), from the base and the chain of overrides."""
    if profile in _seen:
        raise ParamsSourceError(f"profiles extend each other in a circle: {' -> '.join((*_seen, profile))}")
    path = profiles_dir / f"{profile}.yaml"
    override = _read(path)
    parent = _extends(override, path)
    base_doc = _read(base_path)
    merged = _expand(base_doc) if parent == "base" else build(parent, base_path, profiles_dir, (*_seen, profile))
    body = CommentedMap((k, v) for k, v in override.items() if k != "extends")
    body.ca.items.update({k: v for k, v in override.ca.items.items() if k != "extends"})
    merge(merged, body, _expand(base_doc), _rel(path))
    return merged


def render(profile: str, base_path: Path = BASE, profiles_dir: Path = PROFILES_DIR) -> str:
    """The text of params/<profile>.yaml."""
    merged = build(profile, base_path, profiles_dir)  # first: it stops profiles that extend each other in a circle
    parents, p = [], profile
    while p != "base":
        parents.append(f"{_rel(profiles_dir / f'{p}.yaml')}")
        p = _extends(_read(profiles_dir / f"{p}.yaml"), profiles_dir / f"{p}.yaml")
    head = (f"# GENERATED by `python -m lib.params` from {_rel(base_path)}\n# + {' + '.join(reversed(parents))}:\n"
            "# edit those, not this file (a test fails when it is out of date). `# paper:` marks a value this "
            "profile changes.\n")
    out = io.StringIO()
    _yaml().dump(merged, out)
    return head + out.getvalue()


def write(check: bool = False, out_dir: Path = PARAMS) -> list[str]:
    """Write (or with `check`, compare) every profile's file; the names of those that were out of date."""
    stale = []
    for profile in PROFILES:
        path = out_dir / f"{profile}.yaml"
        text = render(profile)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(_rel(path))
            if not check:
                path.write_text(text, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    try:
        stale = write(check=args.check)
    except ParamsSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `python -m lib.params`", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(PROFILES)} params files"
          + (f"; rewrote {', '.join(stale)}" if stale and not args.check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
