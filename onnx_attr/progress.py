"""Progress bars on stderr (tqdm): examples or files done, rate and ETA, for runs that take a while.

Quiet when stderr is not a terminal (logs and pipes stay clean) or when asked; then every call
is a no-op, so the jobs call it unconditionally.
"""

from __future__ import annotations

import sys
from typing import Any, Optional


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(total: Optional[int], unit: str, desc: str, quiet: bool = False, leave: bool = True) -> Any:
    """A tqdm bar on stderr, or a silent stand-in when quiet or not on a terminal."""
    if quiet or not _is_terminal():
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=leave, dynamic_ncols=True,
                mininterval=0.5)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
