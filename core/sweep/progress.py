"""What the evaluation stage shows while it runs: one progress bar (default), nothing (quiet) or one line per unit
(verbose). The engine only calls `progress(unit, info)` after each unit; everything shown is decided here.

On a terminal the bar is tqdm's (on stderr: examples done of the total, rate, ETA; units in the postfix). When the
output is a log or a pipe a bar's carriage returns would pile up, so a plain line is printed at most every
`LOG_EVERY_S` seconds instead, plus the final count.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

OUTPUT_MODES = ("bar", "quiet", "verbose")
LOG_EVERY_S = 30.0


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class EvalProgress:
    def __init__(self, mode: str = "bar", stream: TextIO | None = None, terminal: bool | None = None):
        if mode not in OUTPUT_MODES:
            raise ValueError(f"output mode {mode!r} not in {OUTPUT_MODES}")
        self.mode = mode
        self.stream = stream
        self.terminal = (stream or sys.stderr).isatty() if terminal is None else terminal
        self.units = self.examples = self.units_done = self.examples_done = 0
        self.start_time = self.last_log = 0.0
        self.bar = None
        self.first: tuple[float, int] | None = None  # (time, examples done) at the first finished unit

    def start(self, units: int, examples: int) -> None:
        self.units, self.examples = units, examples
        self.start_time = self.last_log = time.monotonic()
        if self.mode == "bar" and units and self.terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=examples, desc="attacks", unit="ex", unit_scale=False, dynamic_ncols=True,
                            file=self.stream or sys.stderr, smoothing=0.1)
            self.bar.set_postfix_str(f"units 0/{units}")

    def __call__(self, unit: Any, info: dict[str, Any]) -> None:
        self.units_done += 1
        self.examples_done += int(info.get("examples", 0))
        if self.first is None:
            self.first = (time.monotonic(), self.examples_done)
        if self.mode == "verbose":
            eps = ",".join(f"{e:g}" for e in unit.eps)
            self._print(f"[eval] {unit.trial_id} {unit.attack.label} eps={eps} shard={unit.shard}: "
                        f"{info['examples']} examples in {info['seconds']:.1f}s")
        elif self.bar is not None:
            self.bar.update(int(info.get("examples", 0)))
            self.bar.set_postfix_str(f"units {self.units_done}/{self.units}")
        elif self.mode == "bar" and time.monotonic() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.monotonic()
            self._print(self.status())

    def status(self) -> str:
        # The rate counts from the first finished unit: the time before it is mostly the workers starting up.
        elapsed = time.monotonic() - self.first[0] if self.first else 0.0
        rate = (self.examples_done - self.first[1]) / elapsed if self.first and elapsed > 0 else 0.0
        left = self.examples - self.examples_done
        speed = f" ({rate:.1f} examples/s, ETA {_clock(left / rate)})" if rate > 0 and left > 0 else ""
        return f"[eval] {self.units_done}/{self.units} units, {self.examples_done}/{self.examples} examples{speed}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode != "quiet" and self.units:
            elapsed = time.monotonic() - self.start_time
            self._print(f"[eval] {self.units_done} units, {self.examples_done} examples in {_clock(elapsed)}")

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)
