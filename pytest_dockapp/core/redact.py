"""Masking of values whose names look like secrets, for reports and logs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH", re.IGNORECASE)
MASK = "*****"


def looks_secret(name: str) -> bool:
    """Whether a variable called ``name`` probably holds a secret."""
    return bool(_SECRET_NAME.search(name))


def redact(values: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``values`` with secret-looking entries masked."""
    return {k: (MASK if looks_secret(k) and v else v) for k, v in (values or {}).items()}


def redact_text(text: str, values: Mapping[str, str] | None) -> str:
    """``text`` with the values of secret-looking entries replaced by the mask."""
    for key, value in (values or {}).items():
        if value and len(value) >= 4 and looks_secret(key):
            text = text.replace(value, MASK)
    return text


def mask_values(text: str, values: Iterable[str]) -> str:
    """``text`` with every one of ``values`` (known secrets, 4+ characters) replaced by the mask."""
    for value in sorted(values, key=len, reverse=True):  # longest first: a secret may contain another
        if len(value) >= 4:
            text = text.replace(value, MASK)
    return text


def secret_values(values: Mapping[str, str] | None) -> set[str]:
    """The values of secret-looking entries of ``values``."""
    return {v for k, v in (values or {}).items() if looks_secret(k) and v and len(v) >= 4}
