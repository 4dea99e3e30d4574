"""Names for indices read from a user's file: class names for titles, a vocabulary for token pages.

One reader for every such file, so each is bounded the same way: a regular file (never a FIFO or
a device, which could hang or never end), at most `MAX_BYTES`, UTF-8, and one of

* a JSON list of strings (index i is the i-th string);
* a JSON object of index -> name (`{"0": "tench"}`, or ImageNet's `{"0": ["n01440764", "tench"]}`,
  whose last string is the name);
* a JSON object of name -> index (a tokenizer's `vocab.json`, `{"the": 262}`);
* a JSON object with the list under one key (`{"class_names": [...]}`);
* plain text, one name per line (line i, counted from 0, is index i, as in BERT's `vocab.txt`).

Without a file, class names an exporter wrote into the explained output's name (a JSON list or
object, as openWakeWord's models name theirs), or the labels a scikit-learn classifier carries,
title the pictures.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from onnx_attr.errors import InputError
from onnx_attr.fileio import regular_file

#: Larger than any tokenizer vocabulary or label list we know of (GPT-style vocab.json ~ 1 MB).
MAX_BYTES = 32 * 2**20
#: Longer names are a mistake (or a hostile file), not a label to draw.
MAX_NAME_CHARS = 1000
#: Indices beyond this are not names of classes or tokens but a mistake (or a hostile file).
MAX_INDEX = 2**24

FORMATS = ("a JSON list of strings, a JSON object of index -> name or name -> index, or a text file "
           "with one name per line")


def read_names(path: Optional[str], option: str, key: Optional[str] = None) -> Optional[dict[int, str]]:
    """The names in `path` by index, or None without a path; `option` names the flag in errors and
    `key` is the one key under which a JSON object may hold its list."""
    if path is None:
        return None
    text = _read_bounded(path, option)
    try:
        data = json.loads(text)
    except RecursionError as err:
        raise InputError(f"{option} {path!r}: the JSON is nested too deeply; give {FORMATS}") from err
    except ValueError:
        return _checked_lengths(_from_lines(text, path, option), path, option)
    if not isinstance(data, (list, dict)):  # a lone number or word is a one-line text file
        return _checked_lengths(_from_lines(text, path, option), path, option)
    if isinstance(data, dict) and key is not None and key in data:
        data = data[key]
    names = _from_json(data)
    if names is None:
        raise InputError(f"{option} {path!r}: cannot read names from it; give {FORMATS}")
    if not names:
        raise InputError(f"{option} {path!r} holds no names")
    return _checked_lengths(names, path, option)


def names_in_output_name(name: str) -> Optional[dict[int, str]]:
    """Class names an exporter wrote into an output's name, as openWakeWord's models do (the output
    `{"1": "1_minute_timer", ...}`): a JSON list or index -> name object, else None."""
    if not name.lstrip().startswith(("[", "{")):
        return None
    try:
        names = _from_json(json.loads(name))
    except (ValueError, RecursionError):
        return None
    if not names or any(len(n) > MAX_NAME_CHARS for n in names.values()):
        return None
    return names


#: ai.onnx.ml classifiers, whose class labels are attributes (skl2onnx writes them on each)
_LABELLED = frozenset({"ZipMap", "LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"})


def names_in_graph(onnx_model) -> Optional[dict[int, str]]:
    """Class labels a scikit-learn export carries (`classlabels_strings` or `classlabels_int64s` of its
    ai.onnx.ml classifier and ZipMap: macrel's ['Hemo', 'NonHemo']), where the graph holds one set."""
    found = set()
    for node in onnx_model.graph.node:
        if node.domain == "ai.onnx.ml" and node.op_type in _LABELLED:
            for a in node.attribute:
                if a.name == "classlabels_strings" and a.strings:
                    found.add(tuple(v.decode("utf-8", "replace") for v in a.strings))
                elif a.name == "classlabels_int64s" and a.ints:
                    found.add(tuple(str(v) for v in a.ints))
    if len(found) != 1:
        return None
    (labels,) = found
    return {i: n for i, n in enumerate(labels) if len(n) <= MAX_NAME_CHARS} or None


def _checked_lengths(names: dict[int, str], path: str, option: str) -> dict[int, str]:
    long = next((i for i, n in names.items() if len(n) > MAX_NAME_CHARS), None)
    if long is not None:
        raise InputError(f"{option} {path!r}: name #{long} has {len(names[long]):,} characters, more than the "
                         f"{MAX_NAME_CHARS} allowed")
    return names


def name_of(names: Optional[dict[int, str]], index: int) -> Optional[str]:
    """The name of `index`, or None when there are no names or this index has none."""
    return None if names is None else names.get(int(index))


def _read_bounded(path: str, option: str) -> str:
    return read_bounded_text(path, option, MAX_BYTES)


def read_bounded_text(path: str, option: str, limit: int, kind: str = "a names file") -> str:
    """The UTF-8 text of a small user file (`option` names its flag in errors), at most `limit` bytes."""
    info = os.stat(regular_file(path, option))  # a FIFO or device is refused before it is opened
    if info.st_size > limit:
        raise InputError(f"{option} {path!r} is {info.st_size} bytes, more than the {limit} allowed for {kind}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as err:
        raise InputError(f"{option} {path!r} cannot be read: {err.strerror or err}") from err
    if len(raw) > limit:  # grew since the stat
        raise InputError(f"{option} {path!r} is more than the {limit} bytes allowed for {kind}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        wanted = FORMATS if kind == "a names file" else "UTF-8 text"
        raise InputError(f"{option} {path!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         f"give {wanted}") from err


def _from_lines(text: str, path: str, option: str) -> dict[int, str]:
    lines = text.splitlines()
    if len(lines) > MAX_INDEX:
        raise InputError(f"{option} {path!r} has {len(lines)} lines, more than {MAX_INDEX}")
    if not any(line.strip() for line in lines):
        raise InputError(f"{option} {path!r} holds no names")
    return {i: line.rstrip("\r") for i, line in enumerate(lines)}


def _from_json(data: object) -> Optional[dict[int, str]]:
    """Index -> name from the JSON shapes in the module's docstring, or None for any other."""
    if isinstance(data, list):
        return {i: n for i, n in enumerate(data)} if all(isinstance(n, str) for n in data) else None
    if not isinstance(data, dict):
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):  # name -> index
        if not all(0 <= v < MAX_INDEX for v in data.values()):
            return None
        return {v: k for k, v in data.items()}
    names: dict[int, str] = {}
    for k, v in data.items():
        if not (isinstance(k, str) and k.strip().isdigit() and int(k) < MAX_INDEX):
            return None
        if isinstance(v, list) and v and all(isinstance(s, str) for s in v):
            v = v[-1]
        if not isinstance(v, str):
            return None
        names[int(k)] = v
    return names


def read_feature_names(path: Optional[str]) -> Optional[list[str]]:
    """Names for bar charts, one per feature in order: any form `read_names` takes (a JSON object
    may hold the list under "feature_names"), with no index left without a name."""
    names = read_names(path, "--feature-names", "feature_names")
    if names is None:
        return None
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing or min(names) < 0:
        raise InputError(f"--feature-names {path!r} gives no name for feature(s) {missing[:10]}; give one name "
                         "per feature, in order")
    return [names[i] for i in range(len(names))]
