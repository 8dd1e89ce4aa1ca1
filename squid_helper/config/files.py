"""A config file, whichever form it is in: repos.yaml (config.py) or the original repoproxy's
INI form (iniconfig.py, which builds on config.py). Here, above both, so that neither needs the
other both ways."""

from __future__ import annotations

from pathlib import Path

from .iniconfig import looks_like_ini, parse_ini_config
from .settings import Config, ConfigError, parse_yaml_config


def parse_config(text: str, path: str = "<config>") -> Config:
    """Validate a repos.yaml, or a config in the original repoproxy's INI form (detected by
    iniconfig.looks_like_ini), and return the Config it describes."""
    if looks_like_ini(text, path):
        return parse_ini_config(text, path)
    return parse_yaml_config(text, path)


def load_config(path: str) -> Config:
    """Read and validate a repos.yaml file (or the original repoproxy's INI form)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    return parse_config(text, path)
