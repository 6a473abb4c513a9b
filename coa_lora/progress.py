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


@contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """Turn transformers' progress bars and the hub client's retry warnings off for the block: the library reports
    through its progress callbacks, and a failed download ends in one ValueError sentence, not a page of retries."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hub_level = hub_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(hub_level)
        if enabled:
            hf_logging.enable_progress_bar()
