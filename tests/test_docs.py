"""The docs that are generated from code stay in sync with it."""

from __future__ import annotations

from onnx_attr.importing.converters.registry import supported_ops_markdown

from conftest import ROOT


def test_supported_ops_table_is_current():
    committed = (ROOT / "docs" / "supported_ops.md").read_text()
    assert committed == supported_ops_markdown(), (
        "docs/supported_ops.md is stale: run python -m onnx_attr.importing.converters > docs/supported_ops.md"
    )


def test_readme_method_table_is_current():
    from onnx_attr.methods.registry import README_MARKERS, methods_markdown

    readme = (ROOT / "README.md").read_text()
    start, end = (readme.index(m) for m in README_MARKERS)
    assert readme[start + len(README_MARKERS[0]) + 1:end] == methods_markdown(), (
        "README.md's method table is stale: replace it with the output of python -m onnx_attr.methods")
