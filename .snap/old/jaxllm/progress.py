"""Progress bars for the command lines: tqdm on stderr, shown only on a terminal."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Bar:
    """Counts named steps (tensors read or written); `bar(name)` after each. `delay`: seconds before
    the bar first shows, so quick work prints nothing; `enabled` False: never shown."""

    def __init__(self, total: int | None, what: str, unit: str = "tensor", delay: float = 0.0, enabled: bool = True):
        self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, delay=delay,
                        disable=not (enabled and sys.stderr.isatty()))

    def __call__(self, name: str) -> None:
        self.bar.set_postfix_str(name[-40:], refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
