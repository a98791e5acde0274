"""Every variable of PROTOCOL §1 (and our own), typed and validated in one place.

``load_settings(process)`` is what a ``__main__`` calls: on a bad value it prints one line
naming the variable and what is wrong, and exits with status 2 (no traceback).

Import from here (``from shared.config import Settings``); the modules hold:

- ``variables.py``: the declarations (type, default, bounds of each variable) and the tables
  about variables (DEFAULT_HEALTH_PORTS, SECRET_VARIABLES);
- ``settings.py``: ``Settings``, the checks that need code and the derived values;
- ``loading.py``: ``parse_settings``/``load_settings`` and the one-line error report;
- ``amqp.py``: AMQP_URL helpers (``split_urls``, ``redact_url``) and ``connection_name``.
"""

from shared.config.amqp import connection_name, redact_url, split_urls
from shared.config.loading import load_settings, parse_settings
from shared.config.settings import Settings
from shared.config.variables import DEFAULT_HEALTH_PORTS, SECRET_VARIABLES

__all__ = [
    "DEFAULT_HEALTH_PORTS",
    "SECRET_VARIABLES",
    "Settings",
    "connection_name",
    "load_settings",
    "parse_settings",
    "redact_url",
    "split_urls",
]
