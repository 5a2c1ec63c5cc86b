"""Progress bars (tqdm on stderr) and logging set-up for the commands."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def progress(total: int, desc: str, initial: int = 0, enabled: bool = True) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="it",
        disable=not enabled or None,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
    )


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
