"""Masking of values whose names look like secrets, for reports and logs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# PASS and PWD: DB_PASS, MYSQL_PWD, PGPASSFILE's neighbours; PASSWORD and PASSWD are among them.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASS|PWD|KEY|CREDENTIAL|AUTH", re.IGNORECASE)
#: The password of a URL, whatever the variable holding it is called: ``postgres://app:pw@db/app``.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)(@)")
MASK = "*****"


def looks_secret(name: str) -> bool:
    """Whether a variable called ``name`` probably holds a secret."""
    return bool(_SECRET_NAME.search(name))


def redact(values: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``values`` with secret-looking entries masked."""
    return {k: (MASK if looks_secret(k) and v else mask_values(v, ())) for k, v in (values or {}).items()}


def redact_text(text: str, values: Mapping[str, str] | None) -> str:
    """``text`` with the values of secret-looking entries replaced by the mask."""
    return mask_values(text, secret_values(values))


def mask_values(text: str, values: Iterable[str]) -> str:
    """``text`` with every one of ``values`` (known secrets, 4+ characters) replaced by the mask,
    and the password of every ``scheme://user:password@`` URL in it, known or not."""
    for value in sorted(values, key=len, reverse=True):  # longest first: a secret may contain another
        if len(value) >= 4:
            text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def secret_values(values: Mapping[str, str] | None) -> set[str]:
    """The values of secret-looking entries of ``values``, and the passwords of URLs in any."""
    found = {v for k, v in (values or {}).items() if looks_secret(k) and v and len(v) >= 4}
    found |= {
        m.group(2) for v in (values or {}).values() for m in _URL_PASSWORD.finditer(v or "") if len(m.group(2)) >= 4
    }
    return found


def secret_build_args(build_args: Mapping[str, str]) -> dict[str, str]:
    """The build args whose names look secret and that have a value, each with the one warning
    about it (said at the ini line by the pytest layer, or at the build by the library)."""
    return {
        name: f"build arg {name} looks secret: build arg values are stored in the image's history (docker history "
        "shows them); pass secrets as BuildKit build secrets instead (--dockapp-secret, RUN --mount=type=secret)"
        for name, value in sorted(build_args.items())
        if value and looks_secret(name)
    }


def holds_literal_secret(tree: object) -> bool:
    """Whether a parsed file (mappings, lists, scalars) writes a secret out: a secret-looking key
    (or ``KEY=value`` item) with a value that is not a ``$VARIABLE`` reference, or a URL with a
    password. Such a file is never copied anywhere by the plugin."""
    if isinstance(tree, dict):
        return any((looks_secret(str(k)) and _literal(v)) or holds_literal_secret(v) for k, v in tree.items())
    if isinstance(tree, list):
        return any(holds_literal_secret(v) for v in tree)
    if isinstance(tree, str):
        key, eq, value = tree.partition("=")
        return bool(eq and looks_secret(key) and _literal(value)) or any(
            not m.group(2).startswith("$") for m in _URL_PASSWORD.finditer(tree)
        )
    return False


def _literal(value: object) -> bool:
    if value is None or isinstance(value, (bool, dict, list)):
        return False
    return str(value) != "" and not str(value).startswith("$")
