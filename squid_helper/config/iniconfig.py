"""The original repoproxy's INI config form, and its equivalent repos.yaml for moving on.

The original was documented with one INI section per repo::

    [myrepo]
    mirrorurl=http://wherever.com/mirrorlist?repo=myrepo&ver={releasever}&arch={arch}

A section takes exactly one source: mirrorurl= (the original's name for a mirrorlist),
mirrorlist=, metalink= (one URL each), or baseurl= (one or several base URLs separated by
whitespace, newlines or commas, as yum reads a .repo file's baseurl). The INI form has no
settings: everything else is at its default, except accel_ports, which is [5000], the port the
original served its URLs on (http://myproxy:5000/myrepo/21/x86_64) and the accel port of the
shipped squid.conf; without it those URLs would not be recognised.

Errors name the file, the line, the section and the key, and say how to fix them, as repos.yaml
errors do. `squid-helper check` prints the equivalent repos.yaml (as_yaml).
"""

from __future__ import annotations

import configparser
import re
from typing import Dict, Optional, Tuple

import yaml

from .settings import (
    NUMERIC_SETTINGS,
    RESTRICTION_KEYS,
    Config,
    ConfigError,
    _parse_repo,
    _Reporter,
    parse_yaml_config,
)

# INI key -> what it is; every other key is an error.
INI_SOURCES = {"mirrorurl": "mirrorlist", "mirrorlist": "mirrorlist", "metalink": "metalink",
               "baseurl": "mirrors"}
ORIGINAL_ACCEL_PORT = 5000
# Keys of a yum .repo section: pasted here by mistake, they get a hint instead of a guess.
_YUM_KEYS = {"name", "enabled", "gpgcheck", "gpgkey", "repo_gpgcheck", "skip_if_unavailable",
             "metadata_expire", "cost", "priority", "type", "sslverify", "countme", "proxy",
             "exclude", "includepkgs", "failovermethod", "enabled_metadata"}
_SECTION_LINE = re.compile(r"^\s*\[(?P<name>[^\[\]]+)\]\s*$")
_KEY_LINE = re.compile(r"^(?P<key>[^\s=\[#;][^=]*?)\s*=")
# Not a section name anyone writes: configparser's [DEFAULT] would otherwise pass its keys to
# every section silently; here it is a section (a repo) like any other.
_NO_DEFAULT_SECTION = "\x00no default section"


def looks_like_ini(text: str, path: str = "") -> bool:
    """Whether a config file is in the INI form: its first line that is neither blank nor a
    comment is a [section] line, or its name ends in .ini.

    The content decides, not the name alone: the original's docs kept INI in a file named
    repos.yaml, and a repos.yaml may well be named *.conf. No valid repos.yaml starts with a
    [section] line (that is a YAML list, and a repos.yaml is a mapping), so the rule never
    takes a working YAML file for INI."""
    if path.lower().endswith(".ini"):
        return True
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        return bool(_SECTION_LINE.match(line))
    return False


class _IniReporter(_Reporter):
    """Errors worded with the INI file's own names: '[section] key', not 'repos.section.key'."""

    def error(self, keys: Tuple[str, ...], message: str) -> ConfigError:
        where = self.where(keys)
        names = keys[1:]  # keys[0] is always 'repos'
        label = f"[{names[0]}]" if names else "(file)"
        if len(names) > 1:
            label += f" {names[1]}"
        if len(names) > 2 and names[2].isdigit():
            label += f" (URL {int(names[2]) + 1})"
        return ConfigError(f"{where}: {label}: {message}")


def _line_index(text: str) -> Dict[Tuple[str, ...], int]:
    """('repos', section), ('repos', section, key) and ('repos', section, key, URL index) ->
    the 1-based line of their first appearance; configparser keeps no line numbers."""
    lines: Dict[Tuple[str, ...], int] = {}
    section: Optional[str] = None
    key: Optional[str] = None
    urls = 0  # URLs of the current key's value seen so far
    for number, line in enumerate(text.splitlines(), start=1):
        header = _SECTION_LINE.match(line)
        found = _KEY_LINE.match(line)
        if header:
            section, key = header.group("name"), None
            lines.setdefault(("repos", section), number)
            continue
        if found and section is not None:
            # configparser lower-cases keys (optionxform); so do we, to find them again.
            key, urls = found.group("key").strip().lower(), 0
            lines.setdefault(("repos", section, key), number)
            value = line.split("=", 1)[1]
        elif line[:1].isspace() and key is not None and line.strip()[:1] not in ("#", ";", ""):
            value = line  # an indented continuation of the value above
        else:
            continue
        for _url in value.replace(",", " ").split():
            lines.setdefault(("repos", section, key, str(urls)), number)
            urls += 1
    return lines


def _read(text: str, path: str, lines: Dict[Tuple[str, ...], int]
          ) -> configparser.ConfigParser:
    # No interpolation: '%' and '{}' belong to the URLs. '=' only, as in yum's .repo files, so
    # a stray 'http://...' line is an error rather than a key 'http'.
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",),
                                       comment_prefixes=("#", ";"),
                                       default_section=_NO_DEFAULT_SECTION)
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as exc:
        first = lines.get(("repos", exc.section))
        raise ConfigError(
            f"{path}:{exc.lineno}: [{exc.section}]: the section appears twice (first at line "
            f"{first}); a repo is defined once: remove or rename one") from None
    except configparser.DuplicateOptionError as exc:
        first = lines.get(("repos", exc.section, exc.option))
        raise ConfigError(
            f"{path}:{exc.lineno}: [{exc.section}] {exc.option}: appears twice in the section "
            f"(first at line {first}); keep one (several base URLs go on one baseurl= line, "
            "or on indented lines below it)") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}: {_line(text, exc.lineno)!r} comes before any [repo] section "
            "line; start each repo with its name in brackets, e.g. [myrepo]") from None
    except configparser.ParsingError as exc:
        number = exc.errors[0][0]
        raise ConfigError(
            f"{path}:{number}: {_line(text, number)!r} is not a [section] line, a key=value "
            "line or an indented continuation of the value above; indent the extra URLs of a "
            "baseurl=, or write key=value") from None
    return parser


def _line(text: str, number: int) -> str:
    """Line `number` (1-based) as the user wrote it, shortened; configparser's errors hold
    a repr() of it in some Python versions."""
    lines = text.splitlines()
    return lines[number - 1].strip()[:80] if 0 < number <= len(lines) else ""


def _section_body(parser: configparser.ConfigParser, section: str,
                  report: _IniReporter) -> Dict[str, object]:
    """One section's source, as a repos.yaml repo body ({key: URL} or {'baseurl': [URLs]})."""
    keys = ("repos", section)
    body: Dict[str, object] = {}
    restrictions: Dict[str, object] = {}
    for key, value in parser.items(section):
        if key in RESTRICTION_KEYS:  # releasevers = 9, arches = x86_64 aarch64
            restrictions[key] = value.replace(",", " ").split()
            continue
        if key not in INI_SOURCES:
            hint = (" (that is a yum .repo option: it belongs in the clients' .repo files, "
                    "not here)" if key in _YUM_KEYS else "")
            raise report.error((*keys, key), "unknown key" + hint + "; a repo section takes "
                               "exactly one of mirrorurl=, mirrorlist=, metalink= (one URL) "
                               "or baseurl= (one or more base URLs), and optionally "
                               "releasevers= and arches=")
        if key == "baseurl":
            # yum reads baseurl as a list: whitespace, newlines or commas between URLs.
            urls = value.replace(",", " ").split()
        else:
            # One URL: a mirrorlist URL may hold commas (MirrorManager's country=us,ca).
            urls = value.split()
            if len(urls) > 1:
                raise report.error((*keys, key), f"takes one URL (got {len(urls)}); several "
                                   "mirror base URLs go in baseurl= instead")
        if not urls:
            raise report.error((*keys, key), "is empty; give a URL such as "
                               "http://mirrors.example.org/mirrorlist?repo=x&arch={arch}")
        body[key] = urls if key == "baseurl" else urls[0]
    if not body:
        raise report.error(keys, "has no source; add one of mirrorurl=URL, mirrorlist=URL, "
                           "metalink=URL or baseurl=URL [URL ...]")
    if len(body) > 1:
        found = ", ".join(f"{k}= (line {report.lines.get((*keys, k), '?')})" for k in body)
        raise report.error(keys, f"has {len(body)} sources: {found}; a repo takes exactly one:"
                           " keep one (several base URLs go in one baseurl=)")
    return {**body, **restrictions}


def parse_ini_config(text: str, path: str = "<config>") -> Config:
    """Validate a config in the original repoproxy's INI form and return its Config."""
    lines = _line_index(text)
    report = _IniReporter(path, lines)
    parser = _read(text, path, lines)
    if not parser.sections():
        raise ConfigError(f"{path}: no [repo] section; the INI form needs at least one, e.g. "
                          "[myrepo] with mirrorurl=http://.../mirrorlist?repo=myrepo&ver="
                          "{releasever}&arch={arch} on the next line")
    repos: Dict[str, Dict[str, object]] = {}
    for section in parser.sections():
        body = _section_body(parser, section, report)
        _parse_repo(section, body, report)  # names and URLs, with this file's line numbers
        repos[section] = body
    # The rest is exactly a repos.yaml with these repos: one parser decides every default.
    data = {"accel_ports": [ORIGINAL_ACCEL_PORT], "repos": repos}
    return parse_yaml_config(yaml.safe_dump(data, sort_keys=False), path)


def as_yaml(config: Config) -> str:
    """The repos.yaml text that configures the same as `config` (load_config of it gives an
    equal Config): the settings that are not numeric, the numeric ones that differ from
    their defaults, and the repos with their sources."""
    data: Dict[str, object] = {
        "virtual_hosts": sorted(config.virtual_hosts),
        "accel_ports": sorted(config.accel_ports),
        "cache_dir": config.cache_dir,
        "log_file": config.log_file,
    }
    for key, (default, _minimum, _meaning) in NUMERIC_SETTINGS.items():
        if config.settings[key] != default:
            data[key] = config.settings[key]
    data["repos"] = {
        repo.name: {repo.kind: list(repo.templates) if repo.kind == "mirrors"
                    else repo.templates[0],
                    **{key: list(values) for key, values in (("releasevers", repo.releasevers),
                                                             ("arches", repo.arches)) if values}}
        for repo in config.repos.values()}
    # width: keep each URL on one line, where a reader looks for it.
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096)
