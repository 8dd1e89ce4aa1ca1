"""The `squid-helper` command and its subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, List, Optional

from . import __version__
from .config import NUMERIC_SETTINGS, Config, ConfigError, load_config
from .helperloop import Handler, HelperLoop
from .logsetup import setup_logging
from .memo import Memo
from .preflight import SQUID_USER, memo_mismatch, shared_memo_problem, squid_user_problems
from .protocol import HelperRequest, Reply, err
from .purge import purge
from .resolver import Resolver
from .rewrite import RewriteHandler
from .storeid import StoreIdHandler, StoreIdMapper
from .stores import redacted
from .urls import NotOurs, Refused, map_url

log = logging.getLogger("squid_helper.cli")


def _load(path: str) -> Config:
    return load_config(path)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="/etc/squid-helper/repos.yaml",
                        help="repos.yaml to use (default: %(default)s)")


class _BrokenConfigHandler:
    """Answers while repos.yaml is invalid: Squid stays a working generic proxy (ERR leaves
    every URL alone) instead of dying of helpers that exit at once, and each reply says why."""

    def __init__(self, problem: str):
        self.problem = problem
        self.resolver = None

    def answer(self, request: HelperRequest) -> Reply:
        return err(f"squid-helper configuration error: {self.problem}")

    def reuse_token(self) -> object:
        return None

    def close(self, finish: bool = True) -> None:
        pass


def _run_helper(args: argparse.Namespace, role: str, make_handler: Callable) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        setup_logging(None, role)
        log.error("%s; answering ERR to every request until the config is fixed "
                  "(then restart or reconfigure Squid)", exc)
        return HelperLoop(_BrokenConfigHandler(str(exc)), sys.stdout.buffer, 1).run(
            sys.stdin.buffer)
    setup_logging(config.log_file, role, logging.DEBUG if args.debug else logging.INFO)
    loop = HelperLoop(make_handler(config), sys.stdout.buffer, int(config.workers))

    def reload() -> Optional[Handler]:
        try:
            fresh = _load(args.config)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running config, the new one is invalid: %s", exc)
            return None
        log.info("SIGHUP: reloaded %s (%d repos)", args.config, len(fresh.repos))
        return make_handler(fresh)

    loop.reload = reload
    log.info("%s helper %s started with %s (%d repos, memo %s)", role, __version__,
             args.config, len(config.repos),
             f"{redacted(config.memo)}, else {config.cache_dir}" if config.memo
             else config.cache_dir)
    code = loop.run(sys.stdin.buffer)
    loop.handler.close(finish=False)
    log.info("%s helper exiting", role)
    return code


def cmd_rewrite(args: argparse.Namespace) -> int:
    return _run_helper(args, "rewrite",
                       lambda config: RewriteHandler(Resolver(config, Memo.of(config))))


def cmd_storeid(args: argparse.Namespace) -> int:
    return _run_helper(args, "storeid", lambda config: StoreIdHandler(
        StoreIdMapper(config, Memo.of(config))))


def cmd_purge(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(None, "purge", logging.WARNING)
    failed = 0
    for result in purge(config, args.proxy, args.urls):
        print(f"{'OK  ' if result.ok else 'FAIL'} {result.url}: {result.message}")
        failed += not result.ok
    mismatch = memo_mismatch(config, args.config)
    if mismatch:
        print(f"warning: {mismatch}", file=sys.stderr)
    return 1 if failed or mismatch else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve  # Squid process management is only needed here

    return serve(args)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{args.config}: OK")
    print(f"  virtual hosts: {', '.join(sorted(config.virtual_hosts))}")
    print(f"  accel ports:   {', '.join(map(str, sorted(config.accel_ports))) or 'none'}")
    if config.memo:
        print(f"  memo:          {redacted(config.memo)} (shared by the fleet; "
              f"{config.cache_dir} while it is unreachable)")
    else:
        print(f"  memo:          {config.cache_dir}")
    if config.peers:
        print(f"  peers:         {', '.join(f'{h}:{p}' for h, p in config.peers)} "
              f"(HTCP port {config.htcp_port})")
    print(f"  log file:      {config.log_file or 'stderr'}")
    for key in NUMERIC_SETTINGS:
        value = getattr(config, key)
        print(f"  {key + ':':<16}{int(value) if value == int(value) else value}")
    print(f"  repos ({len(config.repos)}):")
    for repo in config.repos.values():
        print(f"    {repo.name}: {repo.kind}")
        for template in repo.templates:
            print(f"      {template}")
    problems, checked = squid_user_problems(config, args.config, args.squid_user)
    if config.memo:
        problem = shared_memo_problem(config.memo)
        if problem:
            problems.append(problem)
        else:
            print(f"  shared memo:   {redacted(config.memo)} answers")
    if not checked:
        print(f"  {args.squid_user} (Squid's user): not checked; run check as root or as "
              f"{args.squid_user}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if checked and not problems:
        print(f"  {args.squid_user} (Squid's user) can read the config and write the memo "
              "and the log file")
    return 1 if problems else 0


def cmd_resolve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    # stderr, not the log file: run as root, it would create a log file Squid's helpers
    # (running as `proxy`) could not write.
    setup_logging(None, "resolve", logging.DEBUG if args.debug else logging.WARNING)
    extras = {"myport": str(args.myport)} if args.myport else {}
    mapped = map_url(args.url, extras, config)
    if isinstance(mapped, NotOurs):
        print(f"{args.url}: not a repo URL (host not in virtual_hosts, port not in "
              "accel_ports); Squid would fetch it unchanged")
        return 1
    if isinstance(mapped, Refused):
        print(f"{args.url}: refused: {mapped.reason}")
        return 1
    resolver = Resolver(config, Memo.of(config))
    try:
        resolution = resolver.resolve(mapped, settle=True)
    finally:
        resolver.close(finish=False)
    print(f"repo {mapped.repo}, releasever {mapped.releasever}, arch {mapped.arch}, "
          f"path {mapped.path}")
    for step in resolution.trace:
        print(f"  {step}")
    print(f"answer: {resolution.url or 'ERR'} [{resolution.status}, {resolution.elapsed:.3f}s]"
          f" {resolution.reason}")
    return 0 if resolution.url else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squid-helper",
        description="Squid helper that sends yum/dnf repo requests to verified mirrors.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("rewrite", help="run as Squid's url_rewrite_program (stdin/stdout)")
    _add_config(p)
    p.add_argument("--debug", action="store_true", help="log memo hits too")
    p.set_defaults(func=cmd_rewrite)

    p = sub.add_parser("storeid", help="run as Squid's store_id_program (stdin/stdout)")
    _add_config(p)
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_storeid)

    p = sub.add_parser("purge", help="purge repo URLs from Squid and from the memo together")
    _add_config(p)
    p.add_argument("--proxy", default="127.0.0.1:3128",
                   help="Squid's forward proxy HOST:PORT (default: %(default)s)")
    p.add_argument("urls", nargs="+", metavar="URL",
                   help="virtual repo URL, e.g. http://repoproxy/fedora/40/x86_64/repodata/"
                   "repomd.xml")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("serve", help="run Squid with the helpers wired in (foreground)")
    _add_config(p)
    p.add_argument("--port", type=int, default=3128, help="forward proxy port (%(default)s)")
    p.add_argument("--accel-port", type=int, default=5000,
                   help="port for old-style http://proxy:PORT/<repo>/... URLs (%(default)s)")
    p.add_argument("--listen", default="0.0.0.0",
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--dir", default="/var/tmp/squid-helper",
                   help="private directory for squid.conf, cache, memo and logs "
                   "(default: %(default)s)")
    p.add_argument("--allow", action="append", metavar="NETWORK",
                   help="a network of the lab allowed to use the proxy (and to PURGE); repeat "
                   "for several (default: 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16; localhost "
                   "is always allowed)")
    p.add_argument("--cache-size", type=int, default=20000, metavar="MB",
                   help="Squid's disk cache size in MB (default: %(default)s)")
    p.add_argument("--squid", metavar="PATH", help="the squid binary (default: from PATH, "
                   "else /usr/sbin/squid)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate repos.yaml and show what it configures")
    _add_config(p)
    p.add_argument("--squid-user", default=SQUID_USER,
                   help="Squid's cache_effective_user, who runs the helpers: it must read "
                   "the config and write the memo and log file (default: %(default)s)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("resolve", help="show which mirror a URL would go to, and why")
    _add_config(p)
    p.add_argument("url", help="client URL, e.g. http://repoproxy/fedora/40/x86_64/repodata/"
                   "repomd.xml")
    p.add_argument("--myport", type=int, help="the Squid port the request came in on "
                   "(for old-style accel URLs such as http://proxy:5000/...)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_resolve)

    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"squid-helper: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `squid-helper check | head`: the reader left, which is no error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
