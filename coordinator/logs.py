"""Structured JSON logs (structlog), one line per event, on stderr."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Configured:
    """The level configured, read on every call (debug_enabled), so kept at hand."""

    threshold = logging.INFO


def configure(level: str) -> None:
    _Configured.threshold = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_Configured.threshold),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


def debug_enabled() -> bool:
    """Whether debug lines are written: a module global, not a logger's is_enabled_for,
    which costs a lazy logger's lookup on every call it is asked in."""
    return _Configured.threshold <= logging.DEBUG
