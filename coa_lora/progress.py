"""Progress reporting for long jobs.

Library functions take an optional ``progress`` callback ``(done, total, message) -> None``; the CLI turns it into a
tqdm bar and the app into ``st.progress``. The library itself never prints.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

ProgressFn = Callable[[int, int, str], None]


def report(progress: Optional[ProgressFn], done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, message)


@contextmanager
def tqdm_progress(desc: str, disable: bool = False) -> Iterator[ProgressFn]:
    """A progress callback drawing one tqdm bar on stderr; the bar appears on the first report."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int, message: str = "") -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, disable=disable, leave=False)
        bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
