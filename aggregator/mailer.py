"""Hand an email to the SMTP server, or write it to the outbox folder. Nothing else."""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parseaddr
from pathlib import Path

from aggregator.config import SmtpSettings
from aggregator.errors import DeliveryError


def send_smtp(message: EmailMessage, settings: SmtpSettings) -> None:
    """Send ``message`` through the SMTP server; raise DeliveryError with a one-line reason."""
    timeout = settings.timeout.total_seconds()
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    password = settings.password()
    sender = parseaddr(str(message["From"]))[1]
    recipients = [parseaddr(a.strip())[1] for a in str(message["To"]).split(",") if a.strip()]
    where = f"{settings.host}:{settings.port}"
    try:
        client: smtplib.SMTP
        if settings.ssl:
            client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=timeout)
        with client:
            client.ehlo()
            if settings.starttls and not settings.ssl:
                client.starttls(context=context)
                client.ehlo()
            if settings.username:
                if password is None:
                    raise DeliveryError(f"smtp.username is set but ${settings.password_env} is empty")
                client.login(settings.username, password)
            refused = client.send_message(message, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"SMTP {where} refused the login: {exc.smtp_code}") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"SMTP {where}: {exc} (check smtp.starttls / smtp.ssl)") from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise DeliveryError(
            f"SMTP {where} refused every recipient: {sorted(exc.recipients)}",
            temporary=all(400 <= code < 500 for code in codes),
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(
            f"SMTP {where} answered {exc.smtp_code}: {_text(exc.smtp_error)}",
            temporary=400 <= exc.smtp_code < 500,
        ) from None
    except smtplib.SMTPServerDisconnected as exc:
        raise DeliveryError(f"SMTP {where} closed the connection: {exc}", temporary=True) from None
    except (smtplib.SMTPException, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP {where}: {exc}") from None
    except OSError as exc:  # refused, unreachable, timed out
        raise DeliveryError(
            f"cannot reach SMTP server {where}: {exc.strerror or exc}", temporary=True
        ) from None
    if refused:
        raise DeliveryError(f"SMTP {where} refused some recipients: {sorted(refused)}")


def write_outbox(message: EmailMessage, outbox: Path, name: str) -> Path:
    """Write ``message`` as ``<outbox>/<name>.eml`` atomically; return the path."""
    try:
        outbox.mkdir(parents=True, exist_ok=True)
        target = outbox / f"{name}.eml"
        fd, tmp = tempfile.mkstemp(dir=outbox, prefix=".tmp-", suffix=".eml")
        with os.fdopen(fd, "wb") as handle:
            handle.write(message.as_bytes(policy=SMTP))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return target
    except OSError as exc:
        raise DeliveryError(f"cannot write to outbox {outbox}: {exc.strerror or exc}") from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
