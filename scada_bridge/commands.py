"""Commands from SCADA to assets: one path for Modbus writes now and the OPC UA `SendCommand` method later.

A command is a `factory_pipelines.telemetry.Command` published QoS 1 on `factory/{site}/{asset}/cmd`,
as the REST API sends it. When the bridge has the serving store it is recorded in the command book
first (`CommandBook.record_issued`), so a command from a PLC has the same audit trail as one from
the API, and the asset's acknowledgement settles it there. Nothing is queued while the broker is
away: the caller is told at once (`CommandNotSent`), and a recorded command is marked unanswered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from factory_pipelines.command_book import MAX_COMMAND_CHARS, CommandBook
from factory_pipelines.telemetry import Command, command_topic, dump_payload

Publish = Callable[[str, bytes], None]  # raises ConnectionError / TimeoutError when the broker does not take it


class CommandNotSent(RuntimeError):
    """The broker did not take the command (it is recorded as unanswered when there is a command book)."""


class CommandSender:
    """Builds, records and publishes commands for one site."""

    def __init__(self, site: str, publish: Publish, *, book: CommandBook | None = None) -> None:
        self.site = site
        self._publish = publish
        self.book = book
        self.sent = 0

    def send(self, asset_id: str, command: str, parameters: dict[str, Any] | None = None, *, issued_by: str) -> Command:
        """Record (if a book is set), then publish; the Command that went out, or CommandNotSent."""
        if not command or len(command) > MAX_COMMAND_CHARS:
            raise ValueError(f"a command name has 1 to {MAX_COMMAND_CHARS} characters, got {command!r}")
        message = Command(
            command_id=uuid.uuid4().hex, command=command, parameters=parameters or {}, issued_by=issued_by
        )
        if self.book is not None:
            self.book.record_issued(asset_id, message)
        try:
            self._publish(command_topic(self.site, asset_id), dump_payload(message))
        except (ConnectionError, TimeoutError, OSError) as exc:
            if self.book is not None:
                self.book.mark_unanswered(message.command_id, f"not delivered: {exc}")
            raise CommandNotSent(str(exc)) from exc
        self.sent += 1
        return message
