"""Image references checked as the engine parses them (distribution's ``reference`` grammar),
so that a bad ``--dockapp-image`` or cache ref is a usage error at start, not an engine error
later that blames the network.

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ["/" path-component]*
"""

from __future__ import annotations

import re

from pytest_dockapp.core.errors import ConfigurationError

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"({_PATH}(?:/{_PATH})*)(?::({_TAG}))?(?:@({_DIGEST}))?")
RULE = (
    "a reference is [host[:port]/]name[:tag][@sha256:digest]: the name in lowercase letters, digits and . _ -, "
    "separated by /; a tag of at most 128 letters, digits, _ . - (no /: write feature-x for feature/x)"
)


def _has_domain(first: str, rest: str) -> bool:
    """Whether the engine reads ``first`` as a registry host (docker's splitDockerDomain)."""
    return bool(rest) and ("." in first or ":" in first or first == "localhost" or first.lower() != first)


def check_reference(value: str, *, tagged: bool = False) -> str:
    """``value`` as given, when the engine would accept it as an image reference; ``tagged``: a
    push target, which needs a tag or none (never a digest). Else a :class:`ConfigurationError`."""
    text = value.strip()
    first, slash, rest = text.partition("/")
    domain_ok = True
    if slash and _has_domain(first, rest):
        domain_ok = re.fullmatch(_DOMAIN, first) is not None
        body = rest
    else:
        body = text
    match = _REFERENCE.fullmatch(body)
    if not text or not domain_ok or match is None or len(match.group(1)) > 255:
        raise ConfigurationError(f"{value!r} is not a valid image reference", hint=RULE)
    if tagged and match.group(3):
        raise ConfigurationError(f"{value!r} names a digest; a push needs a tag", hint="e.g. registry:5000/app:cache")
    return text
