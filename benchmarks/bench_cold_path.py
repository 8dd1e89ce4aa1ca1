"""Cold path: time to the first answer when some mirrors are hanging, dead or broken.

All mirrors on 127.0.0.1, probe_timeout as given (2 s), a fresh memo and helper per trial.
Scenarios, each timing the first repodata/repomd.xml request (what dnf asks first):

  mirrorlist, good first   a plain mirrorlist [good, hanging]: the survey must not wait for
                           the hanging mirror's timeout
  metalink, good first     a metalink [good, hanging]: the good mirror's hash match decides
  bad ones first           static mirrors [dead (refused), hanging, 500, good]
  turned bad               the survey ran while all four were good; then one dies, one hangs,
                           one answers 500, and a new package path is asked. The good mirror
                           is the slowest, so the first answer goes, unprobed, to one that
                           turned bad; the figure is the time until the answer is right,
                           asking again as dnf's retry would.

Goals: first repomd.xml answer <= 0.5 s in the first three; right answer in "turned bad"
within 2 x probe_timeout.

    /opt/squid-helper/venv/bin/python benchmarks/bench_cold_path.py [--quick]
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Tuple

from common import (
    DEFAULT_EXTRAS,
    ERROR,
    GOOD,
    HANG,
    REPO,
    REPO_PREFIX,
    LinePipe,
    arg_parser,
    dead_url,
    extra_settings,
    helper_argv,
    median,
    mirror,
    package_documents,
    package_urls,
    run,
    static_config,
    verdict,
    wait_ready,
    workdir,
    write_config,
)

from lab.mirrors import MirrorServer, metalink_xml

FIRST_ANSWER_GOAL = 0.5
RIGHT_ANSWER_GOAL = 2.0  # x probe_timeout
REPOMD = REPO_PREFIX + "repodata/repomd.xml"


def timed_ask(helper: LinePipe, url: str, timeout: float) -> Tuple[float, str]:
    started = time.monotonic()
    reply = helper.ask(f"{url} {DEFAULT_EXTRAS}", timeout)
    return time.monotonic() - started, reply


def source_config(tmp: Path, kind: str, good: MirrorServer, hang: MirrorServer,
                  source: MirrorServer, settings: dict) -> Path:
    """A mirrorlist or metalink served by `source`, naming good first and hang second."""
    if kind == "mirrorlist":
        source.documents["/list"] = f"# test\n{good.url}\n{hang.url}\n".encode()
    else:
        repomd = good.documents["/repodata/repomd.xml"]
        source.documents["/list"] = metalink_xml([good.url, hang.url], repomd)
    return write_config(tmp, {REPO: {kind: source.url + "list"}}, **settings)


def first_repomd(name: str, settings: dict, trial: int) -> float:
    documents = package_documents(8)
    limit = 10 * settings["probe_timeout"] + 10
    with ExitStack() as stack:
        tmp = stack.enter_context(workdir())
        good = stack.enter_context(mirror(GOOD, documents))
        hang = stack.enter_context(mirror(HANG, documents))
        if name == "bad ones first":
            error = stack.enter_context(mirror(ERROR, documents))
            config = static_config(tmp, [dead_url(), hang.url, error.url, good.url], **settings)
        else:
            source = stack.enter_context(mirror(GOOD, {}))
            config = source_config(tmp, name.split(",")[0], good, hang, source, settings)
        helper = stack.enter_context(LinePipe(helper_argv(config), f"helper-{trial}", tmp))
        wait_ready(helper)
        seconds, reply = timed_ask(helper, REPOMD, limit)
        if good.url + "repodata/repomd.xml" not in reply:
            raise RuntimeError(f"{name}: expected the good mirror, got {reply}")
        return seconds


def turned_bad(settings: dict, trial: int) -> Tuple[float, int]:
    """(seconds until the answer for a new path is right, answers it took)."""
    documents = package_documents(8)
    urls = package_urls(8)
    limit = 10 * settings["probe_timeout"] + 10
    with ExitStack() as stack:
        tmp = stack.enter_context(workdir())
        hang = stack.enter_context(mirror(GOOD, documents))
        error = stack.enter_context(mirror(GOOD, documents))
        # The good mirror is the slowest: the survey ranks it last, so the first answer after
        # the others turned bad goes to one of them.
        good = stack.enter_context(mirror(GOOD, documents, delay=0.02))
        doomed = stack.enter_context(mirror(GOOD, documents))
        config = static_config(tmp, [doomed.url, hang.url, error.url, good.url], **settings)
        helper = stack.enter_context(LinePipe(helper_argv(config), f"helper-{trial}", tmp))
        wait_ready(helper)
        _, reply = timed_ask(helper, REPOMD, limit)  # the survey: all four good now
        if not reply.startswith("OK"):
            raise RuntimeError(f"warm-up failed: {reply}")
        doomed.stop()
        hang.behaviour, error.behaviour = HANG, ERROR
        expected = good.url + urls[1].split("/x86_64/", 1)[1]
        started = time.monotonic()
        for attempt in range(1, 6):
            _, reply = timed_ask(helper, urls[1], limit)
            if expected in reply:
                return time.monotonic() - started, attempt
        raise RuntimeError(f"turned bad: still {reply} after 5 answers")


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--probe-timeout", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=3, help="fresh helper+memo per trial")
    args = parser.parse_args()
    if args.quick:
        args.trials = 1
    settings = {"probe_timeout": args.probe_timeout, **extra_settings(args)}

    print(f"probe_timeout {args.probe_timeout:g}s, {args.trials} trial(s) per scenario; "
          "seconds to the first repodata/repomd.xml answer")
    firsts: Dict[str, List[float]] = {}
    for name in ("mirrorlist, good first", "metalink, good first", "bad ones first"):
        firsts[name] = [first_repomd(name, settings, trial)
                        for trial in range(1, args.trials + 1)]
        print(f"{name:<24} " + " ".join(f"{s:7.3f}s" for s in firsts[name])
              + f"   median {median(firsts[name]):.3f}s")
    recoveries = [turned_bad(settings, trial) for trial in range(1, args.trials + 1)]
    print(f"{'turned bad':<24} " + " ".join(f"{s:7.3f}s ({n} answers)" for s, n in recoveries)
          + "   (until the answer for a new path is right)")

    for name, figures in firsts.items():
        worst = max(figures)
        print(f"RESULT {name}: worst first repomd.xml answer {worst:.3f}s   goal <= "
              f"{FIRST_ANSWER_GOAL}s: {verdict(worst <= FIRST_ANSWER_GOAL)}")
    ratio = max(s for s, _ in recoveries) / args.probe_timeout
    print(f"RATIO turned bad, worst time to a right answer / probe_timeout = {ratio:.2f}   "
          f"goal <= {RIGHT_ANSWER_GOAL}: {verdict(ratio <= RIGHT_ANSWER_GOAL)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
