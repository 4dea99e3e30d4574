"""docs/images/dataset_report.png: the HTML report of a dataset run, as headless Chromium shows it.

    python docs/make_report_screenshot.py [--out docs/images/dataset_report.png]

Runs `onnx-attr dataset` on 600 digits (sklearn's `load_digits`, scaled as the sample model was
trained; one row made NaN, so the report has an error row) into a temporary folder, opens its
report.html in Debian's chromium (driven as in tests/browser.py), clicks the sort by relative
delta and saves the top of the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    from browser import Browser, find_chromium
    from sklearn.datasets import load_digits

    from onnx_attr.app.dataset_job import attribute_dataset
    from onnx_attr.app.report_html import ReportOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "dataset_report.png"))
    parser.add_argument("--height", type=int, default=2500, help="viewport height in pixels")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("needs chromium (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        x = (load_digits().images[:600] / 16.0).astype(np.float32)[:, None]
        x[123, 0, 4, 4] = np.nan
        np.savez(Path(tmp) / "digits.npz", image=x)
        summary = attribute_dataset(str(ROOT / "samples" / "digits_cnn.onnx"), str(Path(tmp) / "digits.npz"),
                                    str(Path(tmp) / "out"), shard_rows=200, quiet=True,
                                    report=ReportOptions(gallery_rows=120, pictures=4))
        with Browser(chromium, width=1280, height=args.height) as browser:
            browser.open(Path(summary["report"]).as_uri())
            browser.click("#sort-rel")
            browser.evaluate("window.scrollTo(0, 0)")
            browser.screenshot(args.out)
            if browser.problems:
                print("console problems:", browser.problems, file=sys.stderr)
                return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
