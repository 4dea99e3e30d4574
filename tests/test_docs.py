"""The docs that are generated from code stay in sync with it."""

from __future__ import annotations

from onnx_attr.converters.registry import supported_ops_markdown

from conftest import ROOT


def test_supported_ops_table_is_current():
    committed = (ROOT / "docs" / "supported_ops.md").read_text()
    assert committed == supported_ops_markdown(), (
        "docs/supported_ops.md is stale: run python -m onnx_attr.converters > docs/supported_ops.md"
    )
