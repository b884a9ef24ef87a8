"""Redactor: a corpus of real-looking secrets and personal data that must go, and ordinary text that must not change.

The secrets below are fabricated but have the exact shape of real ones (prefixes, lengths, alphabets, checksums),
so the patterns are exercised as they would be in production. ``configure(redact=True)`` on every attribute is
tested end to end (spans on disk) at the bottom; runtime-state redaction is in test_sessions.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import read_table

import runlake
from runlake.redact import DEFAULT_PATTERNS, Pattern, Redactor, default_redactor

RSA_KEY = """-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun
VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK
LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo
-----END RSA PRIVATE KEY-----"""
OPENSSH_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDd7lN0bIqWk0W6XmrD5MvjVqZ6pZ2yq4TwVZ8Lx0C7hQAAAJgx5Hc0MeR3
-----END OPENSSH PRIVATE KEY-----"""
PKCS8_ENCRYPTED = """-----BEGIN ENCRYPTED PRIVATE KEY-----
MIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG9w0BBQwwDgQIqzbkwUo9nJACAggA
MB0GCWCGSAFlAwQBKgQQjJ0Rkv1kh3uKAmPNdoOqOwSCBNAhUMcgDdK2gQzG3YPM
-----END ENCRYPTED PRIVATE KEY-----"""
EC_KEY = (
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oqgVqE2dwp9VoAoGCCqGSM49\n"
    "-----END EC PRIVATE KEY-----"
)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
OPENAI_PROJECT = (
    "sk-proj-Xq7b2LmN9pQrS4tUvW1xYz3A5bC7dE9fG0hJ2kL4mN6oP8qR0sT2uV4wX6yZ8aB0cD2eF4gH6iJ8kL0mN2oP4qR6sT8uV0wX2y"
)
OPENAI_LEGACY = "sk-4yB9Zc2Lq8WmT3BlbkFJr5Hn7Vx1Kd6Pg0Js2Fa9Eu3Qw8"
ANTHROPIC = (
    "sk-ant-api03-Qm9vZ2xlX2tleV9mb3JfdGVzdHMtb25seS1ub3QtcmVhbC1rZXktMTIzNDU2Nzg5MEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZX"
    "-AbCdEfAA"
)

SECRETS: list[tuple[str, str, str]] = [
    # (text, what must vanish, kind in the marker)
    (f"OPENAI_API_KEY={OPENAI_PROJECT}", OPENAI_PROJECT, "api_key"),
    (f"client = OpenAI(api_key='{OPENAI_PROJECT}')", OPENAI_PROJECT, "api_key"),
    (f"using key {OPENAI_PROJECT} for the call", OPENAI_PROJECT, "api_key"),
    (f"legacy key {OPENAI_LEGACY}.", OPENAI_LEGACY, "api_key"),
    (f"x-api-key: {ANTHROPIC}", ANTHROPIC, "api_key"),
    (f"anthropic {ANTHROPIC}", ANTHROPIC, "api_key"),
    (
        "stripe.api_key = 'sk_live_51HqLyjWDarjtT1zdp7dcXsnQ4Zx0YPtNq3'",
        "sk_live_51HqLyjWDarjtT1zdp7dcXsnQ4Zx0YPtNq3",
        "api_key",
    ),
    ("charge with rk_test_4eC39HqLyjWDarjtT1zdp7dc now", "rk_test_4eC39HqLyjWDarjtT1zdp7dc", "api_key"),
    ("Authorization: Bearer " + JWT, JWT, "bearer_token"),
    ("curl -H 'Authorization: bearer 2YotnFZFEjr1zCsicMWpAA9xk3Qm'", "2YotnFZFEjr1zCsicMWpAA9xk3Qm", "bearer_token"),
    ("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1lMTIz", "YWxhZGRpbjpvcGVuc2VzYW1lMTIz", "basic_auth"),
    ("token " + JWT + " expired", JWT, "jwt"),
    ("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
    ("temporary creds ASIAY34FZKBOKMUTVV7A in use", "ASIAY34FZKBOKMUTVV7A", "aws_access_key"),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "secret",
    ),
    (
        "git push https://ghp_R2d2C3poLuke1Leia2Han3Solo4Chewie5Yoda6@github.com/o/r",
        "ghp_R2d2C3poLuke1Leia2Han3Solo4Chewie5Yoda6",
        "github_token",
    ),
    (
        "git push https://bot:ghp_R2d2C3poLuke1Leia2Han3Solo4Chewie5Yoda6@github.com/o/r",
        "ghp_R2d2C3poLuke1Leia2Han3Solo4Chewie5Yoda6",
        "password",
    ),
    (
        "GH token ghp_R2d2C3poLuke1Leia2Han3Solo4Chewie5Yoda6 rotated",
        "ghp_R2d2C3poLuke1Leia2Han3Solo4Chewie5Yoda6",
        "github_token",
    ),
    (
        "fine-grained github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU",
        "github_token",
    ),
    (
        "slack bot xoxb-2048123456789-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxb-2048123456789-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "slack_token",
    ),
    ("maps key AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI here", "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", "api_key"),
    ("HF hf_FqAbcdEfGhIjKlMnOpQrStUvWxYz012345 set", "hf_FqAbcdEfGhIjKlMnOpQrStUvWxYz012345", "api_key"),
    (f"key:\n{RSA_KEY}\nend", RSA_KEY, "private_key"),
    (f"Here it is: {OPENSSH_KEY} Thanks for the help!", OPENSSH_KEY, "private_key"),
    (PKCS8_ENCRYPTED, PKCS8_ENCRYPTED, "private_key"),
    (EC_KEY, EC_KEY, "private_key"),
    (json.dumps({"pem": RSA_KEY, "note": "rotate it"}), json.dumps(RSA_KEY)[1:-1], "private_key"),
    (
        "truncated -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "private_key",
    ),
    ("password=hunter2", "hunter2", "secret"),
    ("DB_PASSWORD='S3cr3t!pass'", "S3cr3t!pass", "secret"),
    ('{"user": "bob", "password": "correct horse battery staple"}', "correct horse battery staple", "secret"),
    ("login with password: Tr0ub4dor&3 please", "Tr0ub4dor&3", "secret"),
    ("passwd=qwerty123 shell=/bin/sh", "qwerty123", "secret"),
    ("Server=db;User Id=sa;Password=P@ssw0rd2024;", "P@ssw0rd2024", "secret"),
    ("client_secret: 8Q~uF5.m3Rk_Zq9vW2xY4bN6cD8eF0gH1iJ3kL5", "8Q~uF5.m3Rk_Zq9vW2xY4bN6cD8eF0gH1iJ3kL5", "secret"),
    ("GET /cb?access_token=ya29.a0AfH6SMBx3&state=1", "ya29.a0AfH6SMBx3", "secret"),
    ("postgresql://app:Sup3rS3cret@db.internal:5432/prod", "Sup3rS3cret", "password"),
    ("redis://:p4ssw0rd@cache:6379/0", "p4ssw0rd", "password"),
    ("write to alice.smith+agents@example.co.uk today", "alice.smith+agents@example.co.uk", "email"),
    ("cc: J.Doe@Sub.Example-Mail.org", "J.Doe@Sub.Example-Mail.org", "email"),
    ("from bob_99@mail.example.com>", "bob_99@mail.example.com", "email"),
    ("call +1 415 555 0132 after 5", "+1 415 555 0132", "phone"),
    ("UK office +44 20 7946 0958.", "+44 20 7946 0958", "phone"),
    ("Berlin: +49 (30) 901820-12", "+49 (30) 901820-12", "phone"),
    ("mobile +33 6 12 34 56 78", "+33 6 12 34 56 78", "phone"),
    ("reach me at (415) 555-0132", "(415) 555-0132", "phone"),
    ("or 415-555-0132 / 415.555.0132", "415-555-0132", "phone"),
    ("portable 06 12 34 56 78", "06 12 34 56 78", "phone"),
    ("London 020 7946 0958", "020 7946 0958", "phone"),
    ("Tel: 5550132", "5550132", "phone"),
    ("phone number: 0041 44 668 18 00", "0041 44 668 18 00", "phone"),
    ("card 4111 1111 1111 1111 exp 12/26", "4111 1111 1111 1111", "credit_card"),
    ("mc 5500-0000-0000-0004", "5500-0000-0000-0004", "credit_card"),
    ("amex 378282246310005", "378282246310005", "credit_card"),
    ("SSN 123-45-6789", "123-45-6789", "ssn"),
]

ORDINARY = [
    "The agent summarised three pull requests and asked the reviewer to approve the second one.",
    "Reset your password: click the link we sent, then choose a password with at least 12 characters.",
    "The API key is stored in the vault; tokens are rotated every 30 days and secrets never leave it.",
    "Basic usage: run the script, then open the report. Bearer bonds were common in the 1920s.",
    "max_tokens: 2048, temperature: 0.7, top_p: 1.0, input_tokens=1523, output_tokens=311",
    "if password == confirm: save(user)",
    "def check(password_hash, pwd): return compare(password_hash, pwd)",
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7 commit 9acdcc6c2980016388a555316af8e5cee934fdf3",
    "request id 550e8400-e29b-41d4-a716-446655440000 and 12345678-1234-1234-1234-123456789012",
    "runlake 0.1.0, Python 3.11.4, duckdb 2.0.0, pyarrow 26.0.1, release 1.10.0-rc.1, v2.3.4",
    "on 2024-01-15, 15/01/2024, 2024-01-15T10:30:00Z and Jan 15, 2024 at 10:30:45.123",
    "total $1,234.56 or €99.99 or USD 12,345,678.90 (tax 19%, +3.5 points)",
    "hosts 192.168.1.1, 10.0.0.255 and localhost:8080; see https://example.com/path?q=1&page=2#top",
    "order #12345678 shipped; epoch 1700000000 (ms 1700000000123); pi is 3.14159; 1,000,000 rows",
    "ISBN 978-3-16-148410-0, ZIP 94103-1234, ranges 2024-2025 and 10-20-30",
    "sk-learn-compatible estimators; the sk- prefix; task-1234; ASIA-PACIFIC region",
    "colours #ff0000 and #00FF00; base64 aGVsbG8gd29ybGQ=; path /usr/local/bin/python3.11",
    "mention @alice in #general; npm i lodash@4.17.21; user at example dot com; foo@bar",
    "tool_call_id call_abc123, turn-1, runtime native, session s-2024-01-15",
    "Top secret: the launch is on Monday. The passport: see page 4.",
    "über 🙂 会话, naïve café — “quoted” text… and a tab\there",
    "token_count: 512 and id: 42 and key: value and auth: enabled",
    '{"tool_calls": ["call-1", "call-2"], "transcript": "user asked for the weather", "turn": 3}',
]


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(("text", "secret", "kind"), SECRETS, ids=[f"{i}-{k}" for i, (_, _, k) in enumerate(SECRETS)])
def test_secrets_and_personal_data_are_removed(redactor: Redactor, text: str, secret: str, kind: str) -> None:
    out = redactor.redact(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out, out
    # nothing but the secret goes: the text around it survives
    residue = [part for part in text.split(secret) if part.strip()]
    for part in residue:
        for word in re.findall(r"[A-Za-z]{4,}", part):
            assert word in out, (word, out)


@pytest.mark.parametrize("text", ORDINARY, ids=range(len(ORDINARY)))
def test_ordinary_text_survives_unchanged(redactor: Redactor, text: str) -> None:
    assert redactor.redact(text) == text
    assert redactor.findings(text) == []


def test_whole_corpus_at_once_and_idempotent(redactor: Redactor) -> None:
    text = "\n".join([t for t, _, _ in SECRETS] + ORDINARY)
    once = redactor.redact(text)
    for _, secret, _ in SECRETS:
        assert secret not in once
    for line in ORDINARY:
        assert line in once
    assert redactor.redact(once) == once, "markers are never redacted again"
    assert len(redactor.findings(text)) >= len(SECRETS)


def test_redact_value_walks_json_and_replaces_secret_keys_whole(redactor: Redactor) -> None:
    state = {
        "tool_calls": ["call-1", {"id": "call-2", "args": {"to": "bob@example.com"}}],
        "password": "anything at all",
        "api_key": "plain",
        "Authorization": "Token abc",
        "x-api-key": 12345,
        "max_tokens": 1024,
        "token_count": "512",
        "alice@example.com": 1,
        "carol@example.com": 2,
        "nested": ({"secret": "s"}, "+1 415 555 0132"),
        "flag": True,
        "none": None,
        "empty_password": "",
    }
    original = json.loads(json.dumps(state, default=list))
    out = redactor.redact_value(state)
    assert out["tool_calls"] == ["call-1", {"id": "call-2", "args": {"to": "[REDACTED:email]"}}]
    assert out["password"] == out["api_key"] == out["Authorization"] == out["x-api-key"] == "[REDACTED:secret]"
    assert out["max_tokens"] == 1024 and out["token_count"] == "512", "ordinary keys keep their values"
    assert out["[REDACTED:email]"] == 1 and out["[REDACTED:email] (2)"] == 2, "redacted keys stay distinct"
    assert out["nested"] == [{"secret": "[REDACTED:secret]"}, "[REDACTED:phone]"]
    assert out["flag"] is True and out["none"] is None and out["empty_password"] == ""
    assert json.loads(json.dumps(state, default=list)) == original, "the input is not modified"


def test_value_under_a_secret_key_goes_whole_whatever_its_type_and_key_spelling(redactor: Redactor) -> None:
    state = {
        "password": ["hunter2"],
        "token": {"value": "abc123secretvalue"},
        "credentials": {"user": "bob", "pass": "x"},
        "secret": True,  # a boolean hides nothing
        "api_key": [],
        "accessToken": "abc123secretvalue",
        "clientSecret": "abc123secretvalue",
        "refreshToken": "abc123secretvalue",
        "sessionToken": "abc123secretvalue",
        "APIKey": "abc123secretvalue",
        "db.password": "abc123secretvalue",
        "http.request.header.authorization": ("Bearer abc",),
        "Client-Secret": 1234,
        "tokenCount": 12,
        "maxTokens": 1024,
        "sessionId": "s-1",
    }
    out = redactor.redact_value(state)
    for key in (
        "password", "token", "credentials", "accessToken", "clientSecret", "refreshToken", "sessionToken", "APIKey",
        "db.password", "http.request.header.authorization", "Client-Secret",
    ):  # fmt: skip
        assert out[key] == "[REDACTED:secret]", key
    assert out["secret"] is True and out["api_key"] == []
    assert out["tokenCount"] == 12 and out["maxTokens"] == 1024 and out["sessionId"] == "s-1"
    assert redactor.redact_item("userPassword", 42) == "[REDACTED:secret]"
    assert redactor.redact_item("contacts", ("bob@example.com", 3)) == ["[REDACTED:email]", 3]


def test_a_long_secret_value_goes_whole(redactor: Redactor) -> None:
    """No pattern stops after a fixed number of characters (the tail would stay in clear), and a 100 kB value
    costs linear time."""
    for size in (600, 100_000):
        value = ("A1b2" * size)[:size] + "TAILSECRET"
        texts = [
            "password=" + value,
            '{"password": "' + value + '"}',
            "api_key: " + value,
            "aws_secret_access_key = '" + value + "'",
            "https://user:" + value + "@db.example.com/x",
            "ghp_" + value.replace("TAILSECRET", "TAILSECRET0"),
        ]
        for text in texts:
            started = time.perf_counter()
            out = redactor.redact(text)
            elapsed = time.perf_counter() - started
            assert "TAILSECRET" not in out and "A1b2A1b2" not in out, (size, text[:30], out[:80])
            assert elapsed < 1.0, (size, text[:30], elapsed)
    assert redactor.redact('{"password": "' + "x" * 5000 + '", "n": 1}') == '{"password": "[REDACTED:secret]", "n": 1}'


def test_patterns_are_configurable() -> None:
    text = "mail bob@example.com, call +1 415 555 0132, badge EMP-123456"
    no_phone = Redactor(disable={"phone"})
    assert no_phone.redact(text) == "mail [REDACTED:email], call +1 415 555 0132, badge EMP-123456"
    extra = Redactor(extra=[("employee_id", r"\bEMP-\d{6}\b")])
    assert extra.redact(text) == "mail [REDACTED:email], call [REDACTED:phone], badge [REDACTED:employee_id]"
    only = Redactor(patterns=[Pattern.of("badge", r"(badge )(EMP-\d+)", group=2, kind="badge")])
    assert only.redact(text) == "mail bob@example.com, call +1 415 555 0132, badge [REDACTED:badge]"
    marker = Redactor(replacement="<{kind} removed>")
    assert marker.redact("bob@example.com") == "<email removed>"
    assert Redactor(sensitive_keys=None).redact_value({"password": "x"}) == {"password": "x"}
    assert Redactor(disable={"phone_nanp"}).redact("415-555-0132") == "415-555-0132"
    assert "email" in Redactor().names and len(Redactor().patterns) == len(DEFAULT_PATTERNS)
    with pytest.raises(ValueError, match="unknown redaction pattern"):
        Redactor(disable={"no-such-pattern"})
    with pytest.raises(ValueError, match="no group 3"):
        Pattern.of("bad", r"(a)", group=3)
    with pytest.raises(ValueError, match="kind"):
        Redactor(replacement="{name}")


def test_no_pattern_backtracks_catastrophically(redactor: Redactor) -> None:
    """Adversarial inputs of 200 kB each: a quadratic or exponential pattern would take minutes; linear is ~0.1 s."""
    n = 200_000
    adversarial = [
        "-----BEGIN PRIVATE KEY-----" * (n // 27),
        "a_" * (n // 2),
        "db_password_" * (n // 12),
        "a" * n + "@",
        "a@" * (n // 2),
        "sk-" * (n // 3),
        "Bearer " * (n // 7),
        "http://a:" * (n // 9),
        "eyJ" * (n // 3),
        "+1 (" * (n // 4),
        "1" * n,
        "12-34 " * (n // 6),
        "phone: " + "1 " * (n // 2),
    ]
    for text in adversarial:
        started = time.perf_counter()
        redactor.redact(text)
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0, (text[:30], elapsed)


def test_configure_redact_cleans_every_attribute_on_disk(lake: Path) -> None:
    runlake.configure(lake, redact=True)
    try:
        with runlake.run("mailer", session_id="r1", input="send to alice@example.com with key " + OPENAI_PROJECT) as r:
            with runlake.node("smtp", type="tool", input={"password": "hunter2", "host": "smtp.example.com"}):
                pass
            r.set_output("sent; call +1 415 555 0132 if it bounces")
    finally:
        runlake.shutdown()
    rows = read_table(lake, "spans").to_pylist()
    text = json.dumps(rows, default=str)
    for secret in ("alice@example.com", OPENAI_PROJECT, "hunter2", "+1 415 555 0132"):
        assert secret not in text
    run = next(r for r in rows if r["span_type"] == "run" and r["record"] == "end")
    assert run["input"] == "send to [REDACTED:email] with key [REDACTED:api_key]"
    assert run["output"] == "sent; call [REDACTED:phone] if it bounces"
    node = next(r for r in rows if r["span_type"] == "node")
    assert json.loads(node["input"]) == {"password": "[REDACTED:secret]", "host": "smtp.example.com"}


def test_configure_redact_replaces_secret_keyed_values_in_metadata_events_and_attributes(lake: Path) -> None:
    """Structured values are redacted by key, not string by string: the value under ``password`` goes."""
    from opentelemetry import trace

    runlake.configure(lake, redact=True)
    try:
        with runlake.run("a", "r3", metadata={"password": "hunter2", "api_key": "abc123def456ghi", "team": "x"}):
            span = trace.get_current_span()
            span.add_event("login", {"password": "hunter2", "user": "bob"})
            span.set_attribute("password", "hunter2")
            span.set_attribute("api_key", "abc123def456ghi")
            span.set_attribute("db.password", 31337)
            span.set_attribute("userAccessToken", "abc123def456ghi")
    finally:
        runlake.shutdown()
    text = json.dumps(read_table(lake, "spans").to_pylist(), default=str)
    assert "hunter2" not in text and "abc123def456ghi" not in text and "31337" not in text
    run = next(r for r in read_table(lake, "spans").to_pylist() if r["record"] == "end")
    attributes = json.loads(run["attributes"])
    assert attributes["password"] == attributes["api_key"] == attributes["db.password"] == "[REDACTED:secret]"
    assert attributes["userAccessToken"] == "[REDACTED:secret]"
    assert json.loads(run["events"])[0]["attributes"] == {"password": "[REDACTED:secret]", "user": "bob"}
    metadata = runlake.HistoryDB(lake).get_runs("r3")[0]["metadata"]  # what the API serves
    assert metadata["password"] == metadata["api_key"] == "[REDACTED:secret]" and metadata["team"] == "x"


def test_configure_redact_cleans_string_array_attributes(lake: Path) -> None:
    from opentelemetry import trace

    runlake.configure(lake, redact=True)
    try:
        with runlake.run("a", "r4"):
            span = trace.get_current_span()
            span.set_attribute("http.request.header.authorization", ["Bearer abcdefghijklmnop1234567890"])
            span.set_attribute("http.request.header.x-forwarded-for-mail", ["bob@example.com", "ok"])
            span.set_attribute("notes", ("call +1 415 555 0132", "fine"))
    finally:
        runlake.shutdown()
    run = next(r for r in read_table(lake, "spans").to_pylist() if r["record"] == "end")
    assert "abcdefghijklmnop1234567890" not in run["attributes"] and "bob@example.com" not in run["attributes"]
    attributes = json.loads(run["attributes"])
    assert attributes["http.request.header.authorization"] == "[REDACTED:secret]"
    assert attributes["http.request.header.x-forwarded-for-mail"] == ["[REDACTED:email]", "ok"]
    assert attributes["notes"] == ["call [REDACTED:phone]", "fine"]


def test_redaction_is_off_for_ordinary_attributes_by_default(lake: Path) -> None:
    runlake.configure(lake)
    try:
        with runlake.run("mailer", session_id="r2", input="send to alice@example.com"):
            pass
    finally:
        runlake.shutdown()
    assert any(r["input"] == "send to alice@example.com" for r in read_table(lake, "spans").to_pylist())


def test_bad_redact_settings_are_clear_errors(lake: Path) -> None:
    with pytest.raises(TypeError, match="redact must be"):
        runlake.configure(lake, redact="yes")


def test_keys_spelled_in_any_case_still_name_secrets() -> None:
    """Word splitting (accessToken -> access_token) must not lose keys a plain lower-casing found (passWord)."""
    redactor = default_redactor()
    cleaned = redactor.redact_value(
        {"passWord": "a", "APIkey": "b", "SECRETkey": "c", "PASSword": "d", "accessToken": "e", "x" * 10_000: "f"}
    )
    assert [k for k, v in cleaned.items() if v != "[REDACTED:secret]"] == ["x" * 10_000]
    assert all(len(k) <= 256 for k in redactor._key_cache), "long keys are not kept in the cache"
