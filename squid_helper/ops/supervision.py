"""When serve starts Squid again after it died: the restart policy, apart from the processes.

Squid 5.7 run in the foreground (-N) exits for good when its helpers die too fast ("helpers are
crashing too rapidly, need help!") and can die of an assertion when helpers are killed at the
wrong moment (Write.cc:40). serve starts it again, with the same squid.conf, cache and memo,
after a growing pause, and gives up when Squid keeps dying: restarting faster than a person can
read cache.log only hides the problem. Pure: the caller passes the time in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

RESTART_WINDOW = 60.0  # seconds over which restarts are counted
MAX_RESTARTS = 5  # restarts allowed within RESTART_WINDOW; one more and serve gives up
FIRST_DELAY = 1.0  # seconds before the first restart; doubled for each recent one
MAX_DELAY = 16.0


@dataclass
class RestartBudget:
    """Restarts of Squid within the last `window` seconds, and the pause before the next."""

    window: float = RESTART_WINDOW
    limit: int = MAX_RESTARTS
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    _restarts: List[float] = field(default_factory=list)

    def recent(self, now: float) -> int:
        """How many restarts happened within the window before now."""
        self._restarts = [at for at in self._restarts if now - at < self.window]
        return len(self._restarts)

    def next_delay(self, now: float) -> Optional[float]:
        """Seconds to wait before restarting a Squid that died at `now`, recording the restart;
        None when the budget is spent and serve should give up."""
        recent = self.recent(now)
        if recent >= self.limit:
            return None
        delay = min(self.first_delay * 2 ** recent, self.max_delay)
        self._restarts.append(now + delay)
        return delay
