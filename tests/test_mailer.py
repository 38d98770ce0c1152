from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from aggregator.config import SmtpSettings
from aggregator.errors import DeliveryError
from aggregator.mailer import send_smtp, write_outbox

from .conftest import SmtpSink, _Handler, free_port


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "Digest"
    msg["From"] = "Aggregator <digest@example.com>"
    msg["To"] = "a@example.com, b@example.com"
    msg.set_content("text part")
    msg.add_alternative("<p>html part</p>", subtype="html")
    return msg


def test_send_plain_smtp(smtp_server: SmtpSink) -> None:
    send_smtp(message(), SmtpSettings(host=smtp_server.host, port=smtp_server.port, starttls=False))
    (envelope,) = smtp_server.envelopes
    assert envelope.mail_from == "digest@example.com"
    assert envelope.rcpt_tos == ["a@example.com", "b@example.com"]
    assert smtp_server.messages[0]["Subject"] == "Digest"


def test_starttls_required_but_not_offered(smtp_server: SmtpSink) -> None:
    with pytest.raises(DeliveryError, match="starttls"):
        send_smtp(message(), SmtpSettings(host=smtp_server.host, port=smtp_server.port))
    assert smtp_server.envelopes == []


def test_server_down_is_a_delivery_error() -> None:
    settings = SmtpSettings(host="127.0.0.1", port=free_port(), starttls=False, timeout="3s")
    with pytest.raises(DeliveryError, match="cannot reach SMTP server"):
        send_smtp(message(), settings)


class _Authenticator:
    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)


def test_login_uses_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(
        _Handler(sink),
        hostname=sink.host,
        port=sink.port,
        authenticator=_Authenticator(),
        auth_require_tls=False,
    )
    controller.start()
    try:
        settings = SmtpSettings(host=sink.host, port=sink.port, starttls=False, username="me")
        monkeypatch.setenv("AGGREGATOR_SMTP_PASSWORD", "wrong")
        with pytest.raises(DeliveryError, match="refused the login") as caught:
            send_smtp(message(), settings)
        assert "wrong" not in str(caught.value)
        monkeypatch.setenv("AGGREGATOR_SMTP_PASSWORD", "s3cret")
        send_smtp(message(), settings)
    finally:
        controller.stop()
    assert len(sink.envelopes) == 1


def test_outbox_write_is_complete_and_named(tmp_path: Path) -> None:
    path = write_outbox(message(), tmp_path / "outbox", "20261128T070000Z-daily-abc")
    assert path.name == "20261128T070000Z-daily-abc.eml"
    assert b"html part" in path.read_bytes()
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == [path.name]  # no temp files left


def test_outbox_unwritable_is_a_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DeliveryError, match="cannot write to outbox"):
        write_outbox(message(), blocker / "outbox", "x")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA, and a certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    ca = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    return ca, cert, key


def _server_context(cert: Path, key: Path) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


def test_starttls_with_login(tls_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = tls_files
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(
        _Handler(sink),
        hostname=sink.host,
        port=sink.port,
        tls_context=_server_context(cert, key),
        require_starttls=True,
        authenticator=_Authenticator(),
    )
    controller.start()
    monkeypatch.setenv("AGGREGATOR_SMTP_PASSWORD", "s3cret")
    try:
        settings = SmtpSettings(host=sink.host, port=sink.port, starttls=True, username="me", ca_file=ca)
        send_smtp(message(), settings)
        # Without our CA the server's certificate is not trusted: a clear error, no mail.
        with pytest.raises(DeliveryError, match="SMTP"):
            send_smtp(message(), SmtpSettings(host=sink.host, port=sink.port, starttls=True))
    finally:
        controller.stop()
    assert len(sink.envelopes) == 1


def test_implicit_tls(tls_files: tuple[Path, Path, Path]) -> None:
    ca, cert, key = tls_files
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(
        _Handler(sink), hostname=sink.host, port=sink.port, ssl_context=_server_context(cert, key)
    )
    controller.start()
    try:
        send_smtp(
            message(), SmtpSettings(host=sink.host, port=sink.port, ssl=True, starttls=False, ca_file=ca)
        )
    finally:
        controller.stop()
    assert len(sink.envelopes) == 1
