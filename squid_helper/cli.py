"""The `squid-helper` command and its subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .config.files import load_config
from .config.iniconfig import ORIGINAL_ACCEL_PORT, as_yaml, looks_like_ini
from .config.settings import NUMERIC_SETTINGS, Config, ConfigError, Repo
from .facts.memo import Memo
from .httpclient import system_ca_file
from .logsetup import setup_logging
from .ops.preflight import (
    config_serve_will_use,
    memo_mismatch,
    shared_memo_problem,
    squid_user_problems,
)
from .ops.purge import purge
from .ops.running import DEFAULT_CONFIG, DEFAULT_SERVE_DIRS, Target, TargetError, find_target
from .ops.squidconf import SquidConfParams
from .ops.squiduser import SquidUserError, detect_squid_user
from .redaction import redacted, redacted_text
from .resolve.resolver import Resolver
from .resolve.urls import NotOurs, Refused, map_url
from .squid.fetchdaemon import FetchLearner, FetchLogDaemon, drain
from .squid.helperloop import Handler, HelperLoop
from .squid.protocol import HelperRequest, Reply, err
from .squid.rewrite import RewriteHandler
from .squid.storeid import StoreIdHandler, StoreIdMapper
from .verify.checker import IntegrityChecker

log = logging.getLogger("squid_helper.cli")


def _load(path: str) -> Config:
    return load_config(path)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                        help="repos.yaml to use, or the original repoproxy's INI file "
                        "(default: %(default)s)")


def _add_target(parser: argparse.ArgumentParser) -> None:
    """--config or --dir for the operator commands, which find the running serve by them."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--config", "-c",
                       help="repos.yaml to use, or the original repoproxy's INI file; the one a "
                       "running serve was started from means that serve's private copy "
                       f"(default: the running serve's of {' or '.join(DEFAULT_SERVE_DIRS)}, "
                       f"else {DEFAULT_CONFIG})")
    which.add_argument("--dir", metavar="DIR",
                       help="serve's --dir: its repos.yaml, memo and forward port")


def _target(args: argparse.Namespace) -> Target:
    """The repos.yaml the operator meant (running.py), into args.config; how it was found
    goes to stderr, so that a changed answer is never a surprise."""
    target = find_target(args.dir, args.config)
    if target.note:
        print(f"squid-helper {args.command}: {target.note}", file=sys.stderr, flush=True)
    args.config = target.config
    return target


def _proxy(args: argparse.Namespace, config: Config) -> str:
    """--proxy, else the config's squid_proxy: a serve's forward port in its private copy."""
    if args.proxy:
        return args.proxy
    host, port = config.squid_proxy
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _add_proxy(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--proxy", metavar="HOST:PORT",
                        help=f"{what} (default: squid_proxy of the config: serve's forward "
                        "port, else 127.0.0.1:3128)")


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


def cmd_fetchlog(args: argparse.Namespace) -> int:
    """Squid's logfile_daemon for its squid-helper access_log line (squid/fetchdaemon.py)."""
    try:
        config = _load(args.config)
    except ConfigError as exc:
        setup_logging(None, "fetchlog")  # stderr: Squid's cache.log
        log.error("%s; not learning from Squid's fetches until the config is fixed (then "
                  "squid -k reconfigure)", exc)
        return drain(sys.stdin.buffer)
    setup_logging(config.log_file, "fetchlog", logging.DEBUG if args.debug else logging.INFO)
    # Squid ends the daemon with SIGTERM (shutdown, reconfigure): the counters of the last
    # second still reach the memo.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        memo = Memo.of(config)
        host, port = config.squid_proxy
        # Each repo file Squid fetched and stored is checked against the repo's checksums.
        checker = IntegrityChecker(config, memo, f"{host}:{port}")
        learner = FetchLearner(config, memo, consider=checker.consider)
    except Exception:  # a bug: Squid must still find its pipe read (a dead daemon stops it)
        log.exception("cannot learn from Squid's fetches")
        return drain(sys.stdin.buffer)
    log.info("fetch log daemon %s started with %s", __version__, args.config)
    try:
        return FetchLogDaemon(learner).run(sys.stdin.buffer)
    finally:
        checker.close(finish=False, timeout=5.0)
        memo.close()


def fetchlog_daemon() -> int:
    """The `squid-helper-fetchlog` program, squid.conf's logfile_daemon: Squid starts it with
    one argument, the path of `access_log daemon:PATH`, which is the helpers' repos.yaml."""
    if len(sys.argv) != 2:
        print("usage: squid-helper-fetchlog CONFIG (Squid's logfile_daemon; see "
              "`squid-helper fetchlog --help`)", file=sys.stderr)
        return 2
    return main(["fetchlog", "--config", sys.argv[1]])


def cmd_purge(args: argparse.Namespace) -> int:
    _target(args)
    config = _load(args.config)
    setup_logging(None, "purge", logging.WARNING)
    proxy = _proxy(args, config)
    failed = 0
    for result in purge(config, proxy, args.urls):
        print(f"{'OK  ' if result.ok else 'FAIL'} {result.url}: {result.message}")
        failed += not result.ok
    mismatch = memo_mismatch(config, args.config, proxy)
    if mismatch:
        print(f"warning: {mismatch}", file=sys.stderr)
    return 1 if failed or mismatch else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .ops.serve import serve  # Squid process management is only needed here

    return serve(args)


# check's "  label: value" lines, values in one column: wide enough for the longest setting.
_LABEL_WIDTH = max(len(key) for key in (*NUMERIC_SETTINGS, "collapsed_forwarding")) + 2


def _field(label: str, value: object) -> str:
    return f"  {label + ':':<{_LABEL_WIDTH}}{value}"


def _memo_lines(config: Config) -> List[str]:
    lines = [_field("memo", f"{redacted(config.memo)} (shared by the fleet; "
                            f"{config.cache_dir} while it is unreachable)") if config.memo
             else _field("memo", config.cache_dir)]
    if config.peers:
        lines.append(_field("peers", f"{', '.join(f'{h}:{p}' for h, p in config.peers)} "
                                     f"(HTCP port {config.htcp_port})"))
    return lines


def _repo_lines(repo: Repo) -> List[str]:
    only = [f"{key} {', '.join(values)} only" for key, values in
            (("releasever", repo.releasevers), ("arch", repo.arches)) if values]
    lines = [f"    {repo.name}: {repo.kind}" + (f" ({'; '.join(only)})" if only else "")]
    lines.extend(f"      {redacted(template)}" for template in repo.templates)
    return lines


def _summary(config: Config, path: str) -> List[str]:
    system = f"the system's, {system_ca_file() or 'none found: certifi'}"
    lines = [f"{path}: OK",
             _field("virtual hosts", ", ".join(sorted(config.virtual_hosts))),
             _field("accel ports", ", ".join(map(str, sorted(config.accel_ports))) or "none"),
             *_memo_lines(config),
             _field("log file", config.log_file or "stderr"),
             _field("CA file", config.ca_file or system),
             _field("upstream proxy", config.upstream_proxy or "none (mirrors directly)"),
             _field("collapsed_forwarding", config.collapsed_forwarding
                    + (" (on with Squid 6.0.1 or later)"
                       if config.collapsed_forwarding == "auto" else ""))]
    for key in NUMERIC_SETTINGS:
        value = getattr(config, key)
        lines.append(_field(key, int(value) if value == int(value) else value))
    lines.append(f"  repos ({len(config.repos)}):")
    for repo in config.repos.values():
        lines.extend(_repo_lines(repo))
    return lines


def _squid_user_lines(config: Config, args: argparse.Namespace) -> List[str]:
    """What check says of Squid's user's access to the config, memo and log file, and of the
    shared memo; a line starting with PROBLEM for each thing that fails."""
    lines, problems = [], []
    if config.memo:
        problem = shared_memo_problem(config.memo)
        if problem:
            problems.append(problem)
        else:
            lines.append(_field("shared memo", f"{redacted(config.memo)} answers"))
    try:
        user = detect_squid_user(args.squid_user, option="--squid-user").name
    except SquidUserError as exc:
        return lines + [f"PROBLEM: {problem}" for problem in [*problems, str(exc)]]
    access, checked = squid_user_problems(config, args.config, user)
    problems.extend(access)
    if not checked:
        lines.append(f"  {user} (Squid's user): not checked; run check as root or as {user}")
    elif not access:
        lines.append(f"  {user} (Squid's user) can read the config and write the memo and "
                     "the log file")
    return lines + [f"PROBLEM: {problem}" for problem in problems]


def cmd_check(args: argparse.Namespace) -> int:
    target = _target(args)
    if target.serve_dir:
        # The operator's file as serve uses it (its memo and log file, not the file's own):
        # an edit is judged before serve is told to reload it.
        source, config = config_serve_will_use(target.config, target.serve_dir)
        label = f"{source} (as serve on {target.serve_dir} uses it)"
    else:
        source, config = args.config, _load(args.config)
        label = source
    access = _squid_user_lines(config, args)
    failed = 1 if any(line.startswith("PROBLEM") for line in access) else 0
    if not looks_like_ini(Path(source).read_text(encoding="utf-8"), source):
        print("\n".join(_summary(config, label) + access))
        return failed
    # The original repoproxy's INI form: the whole output is the equivalent repos.yaml, the
    # summary in its comments, so that `check --config old.ini > repos.yaml` moves to YAML.
    print("\n".join("# " + line for line in [
        *_summary(config, f"{label} (the original repoproxy's INI form)"), *access, "",
        "The same configuration as repos.yaml (every setting is at its default; accel_ports",
        f"is {ORIGINAL_ACCEL_PORT}, the original's port). Save it, edit it, check it, and use",
        "--config with it:", f"  squid-helper check --config {source} > repos.yaml"]))
    print(as_yaml(config), end="")
    return failed


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
          f"path {mapped.path or '(the repo root)'}")
    for step in resolution.trace:  # a mirror list's URL among them: printed redacted
        print(f"  {redacted_text(step)}")
    print(f"answer: {resolution.url or 'ERR'} [{resolution.status}, {resolution.elapsed:.3f}s]"
          f" {redacted_text(resolution.reason)}")
    return 0 if resolution.url else 2


def _status_proxy(args: argparse.Namespace, config: Config) -> Optional[str]:
    return None if args.no_squid else _proxy(args, config)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .ops.status import collect, render_table

    _target(args)
    config = _load(args.config)
    status = collect(config, _status_proxy(args, config))
    # Redacted whole: a mirror list's URL, and the details that quote one, lose its password
    # and query wherever status shows them.
    text = (json.dumps(status, indent=2, sort_keys=True) + "\n" if args.json
            else render_table(status))
    sys.stdout.writelines(redacted_text(text).splitlines(keepends=True))
    sys.stdout.flush()
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from .ops.metrics import exposition, listen_address, serve_metrics
    from .ops.status import collect

    _target(args)
    config = _load(args.config)
    proxy = _status_proxy(args, config)
    if args.listen is None:
        sys.stdout.write(exposition(collect(config, proxy)))
        sys.stdout.flush()
        return 0
    listen = listen_address(args.listen)
    if listen is None:
        print(f"squid-helper metrics: --listen {args.listen!r} is not [ADDRESS:]PORT "
              "(e.g. 9707 for 127.0.0.1:9707, or 10.1.2.3:9707)", file=sys.stderr)
        return 2
    try:
        serve_metrics(lambda: collect(config, proxy), *listen,
                      ready=lambda url: print(f"serving {url}", flush=True))
    except OSError as exc:
        print(f"squid-helper metrics: cannot listen on {args.listen}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_warm(args: argparse.Namespace) -> int:
    from .ops.warm import WarmError, run

    if bool(args.packages) == args.everything:
        print("squid-helper warm: name the packages to fetch, or --all (not both)",
              file=sys.stderr)
        return 2
    if args.workers < 1 or args.timeout <= 0:
        print("squid-helper warm: --workers and --timeout must be positive", file=sys.stderr)
        return 2
    _target(args)
    config = _load(args.config)
    setup_logging(None, "warm", logging.WARNING)
    try:
        return run(config, _proxy(args, config), args.tree, args.packages, args.everything,
                   args.workers, args.timeout)
    except WarmError as exc:
        print(f"squid-helper warm: {exc}", file=sys.stderr)
        return 1


def _add_status_source(parser: argparse.ArgumentParser) -> None:
    _add_proxy(parser, "Squid, whose cache manager gives its hit counters; it answers "
               "localhost only")
    parser.add_argument("--no-squid", action="store_true",
                        help="leave Squid out: the memo's view only")


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

    p = sub.add_parser("fetchlog", help="learn from Squid's own fetches: its access log on "
                       "stdin, as Squid's logfile_daemon writes it (squid.conf starts it as "
                       "squid-helper-fetchlog)")
    _add_config(p)
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_fetchlog)

    p = sub.add_parser("purge", help="purge repo URLs from Squid and from the memo together")
    _add_target(p)
    _add_proxy(p, "Squid's forward proxy")
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
    p.add_argument("--max-client-connections", type=int, metavar="N",
                   default=SquidConfParams.max_client_connections,
                   help="connections one client address may hold at once; raise it for a NAT "
                   "in front of many slaves, or a fleet peer (default: %(default)s)")
    p.add_argument("--squid", metavar="PATH", help="the squid binary (default: from PATH, "
                   "else /usr/sbin/squid)")
    p.add_argument("--user", metavar="USER",
                   help="Squid's cache_effective_user, who runs the helpers (default: the "
                   "Squid build's default user from `squid -v`, else whichever of proxy/squid "
                   "exists)")
    p.add_argument("--log-dir", metavar="DIR",
                   help="where Squid's access.log and cache.log and the helper's helper.log "
                   "go (default: DIR/logs of --dir)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate repos.yaml and show what it configures (for the "
                       "original repoproxy's INI form: print the equivalent repos.yaml)")
    _add_target(p)
    p.add_argument("--squid-user", metavar="USER",
                   help="Squid's cache_effective_user, who runs the helpers: it must read "
                   "the config and write the memo and log file (default: the installed "
                   "Squid's default user from `squid -v`, else whichever of proxy/squid "
                   "exists)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("resolve", help="show which mirror a URL would go to, and why")
    _add_config(p)
    p.add_argument("url", help="client URL, e.g. http://repoproxy/fedora/40/x86_64/repodata/"
                   "repomd.xml")
    p.add_argument("--myport", type=int, help="the Squid port the request came in on "
                   "(for old-style accel URLs such as http://proxy:5000/...)")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("status", help="mirrors, their health and memoised answers per repo, "
                       "and Squid's hit ratio")
    _add_target(p)
    _add_status_source(p)
    p.add_argument("--json", action="store_true",
                   help="one JSON document (schema in the README) instead of the table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="the status as a Prometheus text exposition")
    _add_target(p)
    _add_status_source(p)
    p.add_argument("--listen", metavar="[ADDRESS:]PORT",
                   help="serve /metrics there (until stopped) instead of printing once; "
                        "without ADDRESS on 127.0.0.1 only")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("warm", help="fetch a repo's metadata and packages through Squid, so "
                       "that builds start with them cached")
    _add_target(p)
    _add_proxy(p, "Squid's forward proxy")
    p.add_argument("tree", metavar="REPO/RELEASEVER/ARCH", help="e.g. fedora/40/x86_64")
    p.add_argument("packages", nargs="*", metavar="PACKAGE",
                   help="package names: the newest version of each, in every architecture "
                   "the repo has it for")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="every package the repo lists")
    p.add_argument("--workers", type=int, default=4,
                   help="files fetched at once (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for an answer through the proxy (default: "
                   "%(default)s)")
    p.set_defaults(func=cmd_warm)

    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"squid-helper: configuration error: {exc}", file=sys.stderr)
        return 2
    except TargetError as exc:
        print(f"squid-helper {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`squid-helper check | head`): nothing more to say. Point
        # stdout at /dev/null so that the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as if killed by SIGPIPE, what a shell pipeline expects


if __name__ == "__main__":
    sys.exit(main())
