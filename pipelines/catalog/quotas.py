"""Download quotas: bytes per user per UTC day, counted before a byte is sent.

A request reserves the bytes it will send in one conditional statement (``bytes + n <= limit``), so two parallel
downloads by the same user can never both slip under the limit. Bytes reserved by a transfer the client
abandons stay counted: the quota bounds what a user may ask for, which is what protects the distribution link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipelines.tables import download_usage


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool
    used_bytes: int
    """Bytes counted for the day after this decision (unchanged when refused)."""
    limit_bytes: int | None
    retry_after_s: int
    """Seconds until the day's counter resets (UTC midnight); meaningful when refused."""


def utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def seconds_to_midnight(moment: datetime) -> int:
    """Whole seconds (rounded up, at least 1) until the next UTC midnight."""
    moment = moment.astimezone(UTC)
    midnight = datetime.combine(moment.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, int((midnight - moment).total_seconds() + 0.999999))


class DownloadQuota:
    """The per-user daily counter in ``download_usage``; ``limit_bytes=None`` counts without limiting."""

    def __init__(self, engine: Engine, limit_bytes: int | None) -> None:
        self.engine = engine
        self.limit_bytes = limit_bytes

    def reserve(self, subject: str, size: int, now: datetime) -> QuotaDecision:
        """Count ``size`` bytes for ``subject`` today if that stays within the limit."""
        day = utc_day(now)
        retry_after_s = seconds_to_midnight(now)
        key = (download_usage.c.subject == subject) & (download_usage.c.day == day)
        within = sa.true() if self.limit_bytes is None else download_usage.c.bytes + size <= self.limit_bytes
        for _ in range(2):  # a concurrent first download of the day may win the insert: then update
            with self.engine.begin() as connection:
                updated = connection.execute(
                    download_usage.update().where(key & within).values(bytes=download_usage.c.bytes + size)
                ).rowcount
                if updated:
                    used = connection.execute(sa.select(download_usage.c.bytes).where(key)).scalar_one()
                    return QuotaDecision(True, int(used), self.limit_bytes, retry_after_s)
                used = connection.execute(sa.select(download_usage.c.bytes).where(key)).scalar()
                if used is not None:
                    return QuotaDecision(False, int(used), self.limit_bytes, retry_after_s)
                if self.limit_bytes is not None and size > self.limit_bytes:
                    return QuotaDecision(False, 0, self.limit_bytes, retry_after_s)
            try:
                with self.engine.begin() as connection:
                    connection.execute(download_usage.insert().values(subject=subject, day=day, bytes=size))
                return QuotaDecision(True, size, self.limit_bytes, retry_after_s)
            except sa.exc.IntegrityError:
                continue
        raise RuntimeError(f"download quota of {subject!r}: the counter for {day} kept changing")

    def used(self, subject: str, now: datetime) -> int:
        """Bytes counted for ``subject`` today."""
        key = (download_usage.c.subject == subject) & (download_usage.c.day == utc_day(now))
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(download_usage.c.bytes).where(key)).scalar() or 0)
