"""Remove credentials and personal data from text and JSON-like values before they are stored or forwarded.

``Redactor`` holds compiled patterns, each replacing what it finds with ``[REDACTED:<kind>]``:

- credentials: private key blocks, passwords in URLs, ``Bearer`` / ``Basic`` authorization values, OpenAI /
  Anthropic (``sk-...``), Stripe, GitHub, Slack, Google and Hugging Face keys, AWS access key ids, JWTs, and
  ``password=...``-style pairs (``password``, ``passwd``, ``passphrase``, ``secret``, ``api_key``,
  ``*_token``, ``private_key``, ``aws_secret_access_key``, ...);
- personal data: e-mail addresses, phone numbers (international ``+...``, North American, European numbers with
  a leading 0, and any number after ``phone``/``tel``/``mobile``/``fax``), payment card numbers (Luhn-checked)
  and US social security numbers.

Every pattern is anchored so it never matches inside a longer word or number, and the ones prone to false
positives carry a check: an ``sk-`` key must mix upper case, lower case and digits; a phone number must have 8-15
digits (7-15 after a ``phone:`` label); a card number must pass the Luhn check. Ordinary prose, UUIDs, hex trace
ids, version numbers, dates, times, IP addresses and prices are left alone (``tests/test_redact.py`` holds both
corpora). Matching is linear in the text: no pattern can backtrack catastrophically, and no pattern caps the
length of a secret value (a capped match would leave the tail in clear).

``redact(text)`` cleans a string; ``redact_value(value)`` returns a cleaned deep copy of a JSON-like value, where
in addition the value of any key that names a secret (``password``, ``api_key``, ``authorization``, ...) is
replaced whole, whatever its type; keys are compared normalised (``accessToken`` is ``access_token``).
``redact_item(key, value)`` applies that rule to one value, e.g. a span attribute. Patterns are configurable:
``Redactor(patterns=...)`` replaces the set, ``extra=...`` adds to it, ``disable=...`` drops defaults by name or
kind, ``replacement=`` changes the marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_PATTERNS", "DEFAULT_SENSITIVE_KEYS", "Pattern", "Redactor", "normalise_key", "resolve"]

_MARK = "[REDACTED"


@dataclass(frozen=True)
class Pattern:
    """One thing to remove.

    ``group``: the part of a match that is replaced (the rest, e.g. ``password=``, stays). ``check``: a final
    test on the match (false: leave it alone). ``kind``: the word in the marker (defaults to ``name``).
    """

    name: str
    regex: re.Pattern[str]
    group: int = 0
    check: Callable[[re.Match[str]], bool] | None = None
    kind: str | None = None

    @classmethod
    def of(
        cls,
        name: str,
        regex: str | re.Pattern[str],
        group: int = 0,
        check: Callable[[re.Match[str]], bool] | None = None,
        kind: str | None = None,
        flags: int = 0,
    ) -> Pattern:
        compiled = regex if isinstance(regex, re.Pattern) else re.compile(regex, flags)
        if group > compiled.groups:
            raise ValueError(f"pattern {name!r} has no group {group}")
        return cls(name, compiled, group, check, kind)


PatternLike = Pattern | tuple[str, str] | tuple[str, re.Pattern[str]]


# ---- checks ----------------------------------------------------------------------------------------------
def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _mixed_key(match: re.Match[str]) -> bool:
    """A random key mixes upper case, lower case and digits; a word like ``sk-learn-compatible`` does not."""
    body = match.group("body")
    return any(c.isdigit() for c in body) and any(c.isupper() for c in body) and any(c.islower() for c in body)


def _phone(low: int, high: int) -> Callable[[re.Match[str]], bool]:
    def check(match: re.Match[str]) -> bool:
        text = match["num"]
        return low <= _digits(text) <= high and text.count("(") == text.count(")")

    return check


def _luhn(match: re.Match[str]) -> bool:
    digits = [int(c) for c in match.group(0) if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ssn(match: re.Match[str]) -> bool:
    area, group, serial = match.group(0).split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _credential_value(match: re.Match[str]) -> bool:
    """``password=x`` and ``"password": "x"`` always count; ``password: word`` only when the value is not a plain
    lower-case word, so prose such as "choose a password: at least 12 characters" survives."""
    separator, value = match.group(2), match.group(3)
    if "=" in separator or '"' in separator or "'" in separator:
        return True
    return not (value.isalpha() and value.islower())


# ---- default patterns ------------------------------------------------------------------------------------
_B = r"(?<![A-Za-z0-9_-])"  # not inside a longer token
_E = r"(?![A-Za-z0-9_-])"
_SECRET_KEY_NAMES = (
    r"(?:[A-Za-z0-9]+[_-])*"
    r"(?:pass(?:word|wd|phrase)|secret(?:[_-]?(?:access[_-]?)?key)?|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|(?:access|refresh|auth|id|bearer|session|api|csrf|oauth|github|slack|hf)[_-]?token"
    r"|client[_-]?secret)"
)

DEFAULT_PATTERNS: tuple[Pattern, ...] = (
    Pattern.of(
        "private_key",
        # the body never runs past the next "-----", so a BEGIN without END costs no rescan of the text
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:(?:[^-]|-(?!----)){0,65536}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"|(?:(?:\\[nr]|\s)+[A-Za-z0-9+/=]{16,})*)",
    ),
    Pattern.of(
        "url_password",
        # no cap on the user or password (a longer one would not match at all); both stop at the next "/", which
        # every further "scheme://" contains, so a scan never runs past the next scheme
        r"(?i)\b([a-z][a-z0-9+.-]{1,20}://[^\s/:@\"'<>\[\]]*:)([^\s/@\"'<>\[\]]+)(@)",
        group=2,
        kind="password",
    ),
    Pattern.of("bearer_token", r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/-]{16,}=*)", group=2),
    Pattern.of("basic_auth", r"\b(Basic\s+)([A-Za-z0-9+/]{16,}={0,2})(?![A-Za-z0-9+/=])", group=2),
    Pattern.of(
        "openai_key",
        _B + r"sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin|sid)\d\d-)?(?P<body>[A-Za-z0-9_-]{20,})" + _E,
        check=_mixed_key,
        kind="api_key",
    ),
    Pattern.of("stripe_key", _B + r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}" + _E, kind="api_key"),
    Pattern.of(
        "aws_access_key",
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}(?![A-Z0-9])",
    ),
    Pattern.of("github_token", _B + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})" + _E),
    Pattern.of("slack_token", _B + r"xox[abposr]-[A-Za-z0-9-]{10,}" + _E),
    Pattern.of("google_api_key", _B + r"AIza[0-9A-Za-z_-]{35}" + _E, kind="api_key"),
    Pattern.of("huggingface_token", _B + r"hf_[A-Za-z0-9]{30,}" + _E, kind="api_key"),
    Pattern.of("jwt", _B + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}" + _E),
    Pattern.of(
        "password_pair",
        r"(?i)(?<![A-Za-z0-9_-])(" + _SECRET_KEY_NAMES + r")"
        r"([\"']?[ \t]*(?::|=(?!=))[ \t]*[\"']?)"  # "x == y" is a comparison, not an assignment
        # the value runs to its end however long it is (no cap: a capped match would leave the tail in clear); each
        # branch is one character class with nothing after it, so a match never backtracks
        r"((?<=\")[^\"\n]+|(?<=')[^'\n]+|[^\s\"'&,;<>{}\[\]=][^\s\"'&,;<>{}\[\]]*)",
        group=3,
        check=_credential_value,
        kind="secret",
    ),
    Pattern.of(
        "email",
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}"
        r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])",
    ),
    Pattern.of(
        "credit_card",
        r"(?<![\w-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|3[47]\d{13}|(?:4\d|5[1-5]|2[2-7]|6[05])\d{14})(?![\w-])",
        check=_luhn,
    ),
    Pattern.of("ssn", r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])", check=_ssn),
    Pattern.of(
        "phone_labelled",
        r"(?i)\b(?:phone|tel|telephone|mobile|cell|fax|whatsapp)(?:[ \t]*(?:number|no\.?|#))?[ \t]*[:=]?[ \t]*"
        r"(?P<num>\+?\(?\d[\d \t().-]{5,22}\d)(?![\w-])",
        group=1,
        check=_phone(7, 15),
        kind="phone",
    ),
    Pattern.of(
        "phone_international",
        r"(?<![\w+])(?P<num>\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){2,6})(?![\w-]|\.\d)",
        check=_phone(8, 15),
        kind="phone",
    ),
    Pattern.of(
        "phone_nanp",
        r"(?<![\w+.-])(?P<num>\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\2\d{4})(?![\w-]|\.\d)",
        check=_phone(10, 10),
        kind="phone",
    ),
    Pattern.of(
        "phone_europe",
        r"(?<![\w+.-])(?P<num>0\d{1,4}([ .-])\d{2,6}(?:\2\d{2,6}){1,3})(?![\w-]|\.\d)",
        check=_phone(10, 12),
        kind="phone",
    ),
)

# Keys whose value is a secret whatever it looks like. Keys are compared normalised (``normalise_key``: camelCase
# split into snake_case, lower case, "-", "." and spaces read as "_"), so ``accessToken``, ``X-Api-Key`` and the
# attribute ``http.request.header.authorization`` all match.
DEFAULT_SENSITIVE_KEYS = re.compile(
    r"^(?:[a-z0-9]+_)*(?:pass(?:word|wd|phrase)?|secret|secret_?key|secret_access_key|client_secret"
    r"|api_?key|access_?key|private_?key|token|access_token|refresh_token|auth_token|id_token|session_token"
    r"|bearer_token|authorization|proxy_authorization|cookie|set_cookie|credentials?)$"
)


_CAMEL_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")  # "APIKey" -> "API_Key"
_CAMEL_WORD = re.compile(r"([a-z0-9])([A-Z])")  # "accessToken" -> "access_Token"
_KEY_SEPARATORS = re.compile(r"[-.\s]+")


_MAX_CACHED_KEY = 256  # longer keys are checked each time, not kept


def normalise_key(key: str) -> str:
    """A key as the sensitive-key rule compares it: ``clientSecret`` / ``Client-Secret`` / ``client.secret`` →
    ``client_secret``."""
    key = _CAMEL_WORD.sub(r"\1_\2", _CAMEL_ACRONYM.sub(r"\1_\2", key.strip()))
    return _KEY_SEPARATORS.sub("_", key).lower()


def _as_pattern(item: PatternLike) -> Pattern:
    if isinstance(item, Pattern):
        return item
    name, regex = item
    return Pattern.of(name, regex)


class Redactor:
    """Compiled redaction patterns; callable on a string.

    ``patterns``: the full set (default ``DEFAULT_PATTERNS``); ``extra``: added after it; ``disable``: names of
    patterns (or kinds, e.g. ``"phone"``) to drop; ``replacement``: the marker, with ``{kind}`` for the pattern's kind;
    ``sensitive_keys``: regex (or None) for mapping keys whose whole value ``redact_value`` replaces.
    Patterns are ``Pattern`` objects or ``(name, regex)`` pairs.
    """

    def __init__(
        self,
        patterns: Iterable[PatternLike] | None = None,
        *,
        extra: Iterable[PatternLike] = (),
        disable: Iterable[str] = (),
        replacement: str = "[REDACTED:{kind}]",
        sensitive_keys: str | re.Pattern[str] | None = DEFAULT_SENSITIVE_KEYS,
    ) -> None:
        chosen = [_as_pattern(p) for p in (DEFAULT_PATTERNS if patterns is None else patterns)]
        chosen += [_as_pattern(p) for p in extra]
        dropped = set(disable)
        unknown = dropped - {p.name for p in chosen} - {p.kind for p in chosen if p.kind}
        if unknown:
            raise ValueError(f"unknown redaction pattern(s): {', '.join(sorted(unknown))}")
        self.patterns: tuple[Pattern, ...] = tuple(p for p in chosen if p.name not in dropped and p.kind not in dropped)
        if "{kind}" not in replacement and "{" in replacement:
            raise ValueError("replacement may only use the field {kind}")
        self.replacement = replacement
        if isinstance(sensitive_keys, str):
            sensitive_keys = re.compile(sensitive_keys)
        self.sensitive_keys = sensitive_keys
        self._key_cache: dict[str, bool] = {}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.patterns]

    def _marker(self, pattern: Pattern) -> str:
        return self.replacement.replace("{kind}", pattern.kind or pattern.name)

    def redact(self, text: str) -> str:
        """``text`` with everything the patterns find replaced by markers; non-strings are returned as they are."""
        if not isinstance(text, str) or not text:
            return text
        for pattern in self.patterns:
            text = pattern.regex.sub(self._substitute(pattern), text)
        return text

    __call__ = redact

    def _substitute(self, pattern: Pattern) -> Callable[[re.Match[str]], str]:
        marker = self._marker(pattern)
        group = pattern.group

        def substitute(match: re.Match[str]) -> str:
            whole = match.group(0)
            part = match.group(group)
            if not part or part.startswith(_MARK) or (pattern.check is not None and not pattern.check(match)):
                return whole
            if group == 0:
                return marker
            start, end = match.start(group) - match.start(0), match.end(group) - match.start(0)
            return whole[:start] + marker + whole[end:]

        return substitute

    def findings(self, text: str) -> list[str]:
        """Kinds of what ``redact`` would remove from ``text``, in pattern order (for tests and audits)."""
        found: list[str] = []
        for pattern in self.patterns:
            for match in pattern.regex.finditer(text):
                part = match.group(pattern.group)
                if part and not part.startswith(_MARK) and (pattern.check is None or pattern.check(match)):
                    found.append(pattern.kind or pattern.name)
            text = pattern.regex.sub(self._substitute(pattern), text)
        return found

    def is_sensitive_key(self, key: Any) -> bool:
        """Whether ``key`` names a secret: ``sensitive_keys`` matched against ``normalise_key(key)``."""
        if self.sensitive_keys is None or not isinstance(key, str):
            return False
        known = self._key_cache.get(key)
        if known is None:
            # the word-split form (accessToken -> access_token) and the plain lower-cased one (passWord -> password)
            known = (
                self.sensitive_keys.match(normalise_key(key)) is not None
                or self.sensitive_keys.match(_KEY_SEPARATORS.sub("_", key.strip()).lower()) is not None
            )
            if len(key) <= _MAX_CACHED_KEY:  # the cache is bounded in keys and in bytes
                if len(self._key_cache) >= 4096:
                    self._key_cache.clear()
                self._key_cache[key] = known
        return known

    def redact_item(self, key: Any, value: Any) -> Any:
        """The value found under ``key`` (a mapping key or a span attribute name): replaced whole by
        ``[REDACTED:secret]`` when the key names a secret, whatever its type (string, number, list, dict); else
        ``redact_value(value)``. Nothing to hide is kept as it is: None, booleans, empty values, markers."""
        if self.is_sensitive_key(key) and _holds_secret(value):
            return self._key_marker()
        return self.redact_value(value)

    def redact_value(self, value: Any) -> Any:
        """A cleaned deep copy of a JSON-like value (dicts, lists, tuples, strings, numbers).

        Strings are redacted; the value under a key that names a secret is replaced whole, whatever its type
        (``redact_item``); keys are redacted too (an e-mail address used as a key), keeping them distinct.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = self.redact(key) if isinstance(key, str) else key
                if new_key in out:
                    n = 2
                    while f"{new_key} ({n})" in out:
                        n += 1
                    new_key = f"{new_key} ({n})"
                out[new_key] = self.redact_item(key, item)
            return out
        if isinstance(value, (list, tuple)):
            return [self.redact_value(item) for item in value]
        return value

    def _key_marker(self) -> str:
        return self.replacement.replace("{kind}", "secret")

    def __repr__(self) -> str:
        return f"Redactor(patterns={self.names!r}, replacement={self.replacement!r})"


def _holds_secret(value: Any) -> bool:
    """False for what cannot hide a secret (None, a boolean, an empty value) or is already a marker."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value) and not value.startswith(_MARK)
    if isinstance(value, (list, tuple, dict, Mapping)):
        return len(value) > 0
    return True


_default: Redactor | None = None


def default_redactor() -> Redactor:
    global _default
    if _default is None:
        _default = Redactor()
    return _default


def resolve(setting: Any, *, default_on: bool) -> Redactor | Callable[[str], str] | None:
    """Turn a ``redact=`` setting into a redactor: ``True`` → the default ``Redactor``, ``False`` → None,
    ``None`` → per ``default_on``, a ``Redactor`` or any ``str -> str`` callable → itself."""
    if setting is None:
        setting = default_on
    if setting is True:
        return default_redactor()
    if setting is False:
        return None
    if isinstance(setting, Redactor) or callable(setting):
        return setting
    raise TypeError(f"redact must be True, False, a runlake.redact.Redactor or a str -> str callable, got {setting!r}")
