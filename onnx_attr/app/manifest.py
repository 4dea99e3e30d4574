"""The settings that made a result, so that a resume never mixes results of different runs.

A manifest records what decides the numbers: the model file's sha256, the method, the target
spec, the baseline (with the sha256 of a baseline file), the options, and the versions of the
libraries that computed it. `differences` names the settings in which two manifests disagree, so
a resume can refuse with a message a user can act on. The attribution job writes one into every
`report.json` and `index.json`; the dataset job reuses the same two functions.
"""

from __future__ import annotations

import hashlib
import os
import platform
from typing import Any, Mapping, Optional

#: Bumped whenever the manifest's layout changes: a result with another schema is never trusted.
SCHEMA = 1

#: Report key -> the distribution whose version is recorded (those that compute or read the numbers).
VERSIONED = {"onnx_attr": "onnx-attr", "torch": "torch", "onnx": "onnx", "onnx2torch": "onnx2torch",
             "onnxruntime": "onnxruntime", "numpy": "numpy"}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Installed versions from the package metadata (no module import needed)."""
    from importlib import metadata

    found = {}
    for key, distribution in VERSIONED.items():
        try:
            found[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[key] = _imported_version(distribution)
    found["python"] = platform.python_version()
    return found


def _imported_version(name: str) -> str:
    """A source tree run without installation: the module's own version, if it states one."""
    if name == "onnx-attr":
        from onnx_attr import __version__

        return __version__
    return "not installed"


def build_manifest(*, model_sha256: str, method: str, target: Optional[str], baseline: str,
                   baseline_sha256: Optional[str] = None, output: Optional[str] = None,
                   options: Optional[Mapping[str, Any]] = None,
                   library_versions: Optional[Mapping[str, str]] = None) -> dict:
    """The run's settings, JSON-ready. `target` and `baseline` are the specs as the user gave them
    (None: the predicted class); a baseline read from a file is identified by its content."""
    return {
        "schema": SCHEMA,
        "model_sha256": model_sha256,
        "method": method,
        "target": target,
        "baseline": {"spec": baseline, **({"sha256": baseline_sha256} if baseline_sha256 else {})},
        "output": output,
        "options": dict(sorted((options or {}).items())),
        "versions": dict(library_versions if library_versions is not None else versions()),
    }


def differences(old: Optional[Mapping[str, Any]], new: Mapping[str, Any],
                ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings (dotted names) in which `old` and `new` differ, each as 'name: old -> new';
    empty when they agree. A missing `old` (a result written without a manifest) differs in all."""
    if not isinstance(old, Mapping):
        return ["manifest: none recorded (written by an older onnx-attr or another tool)"]
    flat_old, flat_new = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        a, b = flat_old.get(key, "<unset>"), flat_new.get(key, "<unset>")
        if a != b:
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
