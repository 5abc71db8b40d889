"""Secret masking: one helper for everything that leaves the process as text.

Two layers, because a secret can show up in two shapes:

- **By form**: credentials in any URL (``user:password@``, ``?token=``/``key``/
  ``signature``/``secret``/``password`` parameters) and ``Bearer``/``Basic``
  credentials. Database URLs go through SQLAlchemy's own renderer.
- **By value**: every secret the configuration holds (Slack tokens and webhook URLs,
  PagerDuty routing keys, webhook secrets and headers, OTLP headers, passwords and
  secret parameters of every URL) is registered when the configuration is built;
  wherever the value appears later (a urllib3 debug line with only the path, a
  client library's error, a JSON payload), it is replaced.

:func:`mask_text` applies both. It runs in a log-record factory (every log line at
every level, from any library, before any handler sees it), on the writes to the
state store (:func:`mask_secrets_in_writes`), on ``config show`` and on CLI errors.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

MASK = "***"
#: a query parameter whose name contains one of these carries a credential
_SECRET_PARAM = r"[\w.-]*(?:token|key|sig|secret|passw|pwd|auth|credential|session)[\w.-]*"
_PARAM_RE = re.compile(rf"(?i)(^|[?&;#])({_SECRET_PARAM})=([^&;#\s'\"<>]*)")
#: the same outside a URL (``POST /x?token=abc HTTP/1.1`` in a urllib3 debug line)
_LOOSE_PARAM_RE = re.compile(rf"(?i)([?&;]{_SECRET_PARAM}=)([^&;#\s'\"<>,)]+)")
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_AUTH_RE = re.compile(
    r"\b((?i:bearer))(\s+)[A-Za-z0-9._~+/=-]{6,}|\b(Basic)(\s+)(?=[A-Za-z0-9+/]*[0-9=])[A-Za-z0-9+/]{8,}=*"
)
#: config keys whose value is a secret whatever its form
SECRET_KEYS = ("token", "secret", "password", "routing_key", "api_key", "headers", "webhook_url")
#: headers whose values are not secrets (not masked wherever they appear)
_PLAIN_HEADERS = frozenset(
    {"content-type", "accept", "user-agent", "content-encoding", "accept-encoding", "connection"}
)
#: shorter values are not masked by value (too likely to occur by chance)
MIN_SECRET_LEN = 6
_DB_SCHEMES = (
    "postgres",
    "mysql",
    "mariadb",
    "sqlite",
    "mssql",
    "oracle",
    "cockroach",
    "redshift",
    "snowflake",
    "duckdb",
)


def _mask_params(part: str) -> str:
    return _PARAM_RE.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if m.group(3) else m.group(0), part
    )


def mask_url(url: str) -> str:
    """``url`` with its password and secret query/fragment parameters replaced by ``***``.

    Database URLs are rendered by SQLAlchemy (``hide_password=True``); anything else is
    split with urllib. A string that is not a URL is returned as is."""
    if not isinstance(url, str) or "://" not in url:
        return url
    scheme = url.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0].startswith(_DB_SCHEMES):
        try:
            from sqlalchemy.engine import make_url

            url = make_url(url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: urllib below still masks it
            pass
    try:
        parts = urlsplit(url)
    except ValueError:
        return _mask_loose(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, pw = userinfo.split(":", 1)
            if pw and pw != MASK:
                netloc = f"{user}:{MASK}@{host}"
    query, fragment = _mask_params(parts.query), _mask_params(parts.fragment)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _mask_loose(text: str) -> str:
    text = _LOOSE_PARAM_RE.sub(lambda m: m.group(1) + MASK, text)
    return _AUTH_RE.sub(
        lambda m: (m.group(1) or m.group(3)) + (m.group(2) or m.group(4)) + MASK, text
    )


class _Registry:
    """The secret values known to this process (from every configuration built)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_LEN or value == MASK or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            ordered = sorted(self._values, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def sub(self, text: str) -> str:
        p = self._pattern
        return p.sub(MASK, text) if p is not None else text

    def __contains__(self, value: str) -> bool:
        return value in self._values

    def found_in(self, text: str) -> bool:
        return any(v in text for v in self._values)


_REGISTRY = _Registry()


def register_secret(value: str | SecretStr | None) -> None:
    """Mask ``value`` wherever it appears from now on (with the parts of it that travel
    alone: a URL's path, password and secret parameters)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str) or not value:
        return
    _REGISTRY.add(value)
    if "://" in value:
        parts = urlsplit(value)
        if len(parts.path) > 1:
            _REGISTRY.add(parts.path + (f"?{parts.query}" if parts.query else ""))
            _REGISTRY.add(parts.path)
        _register_url_parts(value)
    _install_log_masking()


def _register_url_parts(url: str) -> None:
    """The password and the secret parameter values of a URL that is not itself secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        _REGISTRY.add(parts.password)
        from urllib.parse import unquote

        _REGISTRY.add(unquote(parts.password))
    for part in (parts.query, parts.fragment):
        for m in _PARAM_RE.finditer(part):
            _REGISTRY.add(m.group(3))


def register_config_secrets(node: Any, key: str = "") -> None:
    """Register every secret of a configuration (a pydantic model or its ``model_dump()``):
    ``SecretStr`` values, values under secret-named keys (``headers``, ``token``, ...), and
    the passwords and secret parameters of every URL."""
    if hasattr(node, "model_dump"):
        node = node.model_dump()
    if isinstance(node, SecretStr) or (key and _secret_key(key) and isinstance(node, str)):
        register_secret(node)
    elif isinstance(node, Mapping):
        for k, v in node.items():
            if (
                key
                and _secret_key(key)
                and isinstance(v, str)
                and str(k).lower() not in _PLAIN_HEADERS
            ):
                register_secret(v)  # headers: {Authorization: ...}
                register_secret(v.rsplit(" ", 1)[-1])  # the token of "Bearer <token>"
            register_config_secrets(v, str(k))
    elif isinstance(node, list | tuple | set | frozenset):
        for v in node:
            register_config_secrets(v, key)
    elif isinstance(node, str) and "://" in node:
        _register_url_parts(node)
        if _REGISTRY._values:
            _install_log_masking()


def _secret_key(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in SECRET_KEYS) and not k.endswith("_env")


#: what any credential by form needs (one search rules most strings out)
_SUSPECT = re.compile(r"://|[?&;#][\w.-]+=|(?i:bearer|basic)\s")


def mask_text(text: str) -> str:
    """``text`` with every registered secret and every credential in a URL replaced."""
    if not isinstance(text, str) or len(text) < MIN_SECRET_LEN:
        return text
    if (
        " " not in text
        and "/" not in text
        and ":" not in text
        and "=" not in text
        and "\n" not in text
    ):
        # one word (an id, a name, a number): only registered values can hide in it
        return _REGISTRY.sub(text) if _REGISTRY.found_in(text) else text
    text = _REGISTRY.sub(text)
    if _SUSPECT.search(text) is None:
        return text
    if "://" in text:
        text = _URL_RE.sub(lambda m: mask_url(m.group(0)), text)
    return _mask_loose(text)


def mask_config(node: Any, key: str = "") -> Any:
    """A dumped configuration (``model_dump(mode="json")``) fit to print: secret-named keys
    become ``***``, every other string goes through :func:`mask_text`."""
    if isinstance(node, Mapping):
        return {
            k: (
                MASK
                if _secret_key(str(k)) and v and not isinstance(v, bool)
                else mask_config(v, str(k))
            )
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return [mask_config(v, key) for v in node]
    if isinstance(node, str):
        return mask_text(node)
    return node


# -- logging -----------------------------------------------------------------
_install_lock = threading.Lock()
_installed = False


def _mask_record(record: logging.LogRecord) -> None:
    try:
        msg = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is the handler's problem
        return
    masked = mask_text(msg)
    if masked != msg:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        masked = mask_text(text)
        if masked != text:
            record.exc_text = masked
            # formatters that read the exception itself (PySpark's JSON one) see it masked
            exc = record.exc_info[1]
            try:
                exc.args = tuple(mask_text(a) if isinstance(a, str) else a for a in exc.args)
            except Exception:  # noqa: BLE001 - an exception type with read-only args
                pass
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info)


def _install_log_masking() -> None:
    """Mask every log record at creation, whichever logger and handler (idempotent)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _mask_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def install_log_masking() -> None:
    """Mask credentials in every log line of this process (the CLI calls it first thing)."""
    _install_log_masking()


# -- the state store -------------------------------------------------------------
_SCALARS = frozenset({int, float, bool, type(None), bytes})


def _strings(params: Any) -> list[str]:
    t = type(params)
    if t is str:
        return [params]
    if t is dict:
        return [v for v in params.values() if type(v) is str]
    if t is list or t is tuple:
        if params and type(params[0]) is dict:  # executemany: one dict per row
            return [v for row in params for v in row.values() if type(v) is str]
        out: list[str] = []
        for v in params:
            out.extend(_strings(v)) if type(v) is not str else out.append(v)
        return out
    return []


def _clean(params: Any) -> bool:
    """True when no value of a write can hold a credential: checked on all of its strings at
    once, in C, so bulk writes (costs, scores) pay almost nothing."""
    text = "\x00".join(_strings(params))
    if any(w in text for w in ("://", "=", "earer ", "asic ")):
        return False
    return not _REGISTRY.found_in(text)


def _mask_params_of(params: Any) -> Any:
    t = type(params)
    if t is str:
        return mask_text(params) if len(params) >= MIN_SECRET_LEN else params
    if t in _SCALARS:
        return params
    if t is list or t is tuple:
        return t(_mask_params_of(v) for v in params)
    if isinstance(params, Mapping):
        return {k: _mask_params_of(v) for k, v in params.items()}
    return params


def mask_secrets_in_writes(engine: Any) -> None:
    """Every INSERT/UPDATE through ``engine`` stores masked text: error strings, alert
    payloads, audit records. Lookups (SELECT, DELETE) are left alone."""
    import sqlalchemy as sa

    if getattr(engine, "_llmops_masked", False):
        return

    def before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        head = statement.lstrip()[:6].upper()
        if head in ("INSERT", "UPDATE") and parameters and not _clean(parameters):
            parameters = _mask_params_of(parameters)
        return statement, parameters

    sa.event.listen(engine, "before_cursor_execute", before, retval=True)
    engine._llmops_masked = True
