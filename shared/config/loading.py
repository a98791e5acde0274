"""Loading: build Settings from the environment and report a bad value in one line.

``load_settings(process)`` is what a ``__main__`` calls: on a bad value it prints one line
naming the variable and what is wrong, and exits with status 2 (no traceback).
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from shared.config.settings import Settings
from shared.config.variables import SECRET_VARIABLES
from shared.errors import ConfigError


def _one_line(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]).upper()
        msg = err["msg"].removeprefix("Value error, ")
        if not name:  # a model-level check names its variable itself
            problems.append(msg)
        elif name in SECRET_VARIABLES:
            problems.append(f"{name}: {msg}")
        else:
            problems.append(f"{name}={err.get('input')!r}: {msg}")
    return "; ".join(problems)


def parse_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (+ overrides); raise ConfigError with one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_settings(process: str) -> Settings:
    """For ``__main__``: settings, or one line on stderr and exit status 2."""
    try:
        return parse_settings()
    except ConfigError as exc:
        print(f"workerpool {process}: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
