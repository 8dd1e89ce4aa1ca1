"""What every stage of a resolution shares: the config, the memo and its facts, the prober,
the single flights, the mirrors' health, the threads and the clocks.

The resolver builds one and hands it to the stages (mirror lists, surveys, the watch), so
that none of them needs to be told the same nine things one by one.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

from ..config.settings import Config
from ..facts.flight import SingleFlight
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from .health import MirrorHealth
from .probe import Prober


@dataclass(frozen=True)
class Context:
    config: Config
    memo: Memo
    lifetimes: Lifetimes
    prober: Prober
    flights: SingleFlight
    health: MirrorHealth
    pool: Executor  # probe threads: they only talk HTTP
    background: Executor  # work that waits on probes (verifications, survey completions)
    clock: Callable[[], float] = time.time  # wall clock: when facts were learnt
    timer: Callable[[], float] = time.monotonic  # for waits and durations


class Stage:
    """A part of the resolution (mirror lists, surveys, the watch, the fact reader, the
    verifier): it works with what the Context shares, under the same names."""

    def __init__(self, context: Context):
        self.config: Config = context.config
        self.memo: Memo = context.memo
        self.lifetimes: Lifetimes = context.lifetimes
        self.prober: Prober = context.prober
        self.flights: SingleFlight = context.flights
        self.health: MirrorHealth = context.health
        self.pool: Executor = context.pool
        self.background: Executor = context.background
        self.clock: Callable[[], float] = context.clock
        self.timer: Callable[[], float] = context.timer
