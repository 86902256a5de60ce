"""Enqueue a few jobs into $DJMASTER_DATABASE_URL: 20 mails in one round trip, 3 reports."""

from __future__ import annotations

import jobs

from circus_djmaster import enqueue_many

ids = enqueue_many([jobs.send_welcome.call(user_id) for user_id in range(20)])
ids += [jobs.build_report.delay(month) for month in ("2026-09", "2026-10", "2026-11")]
print(f"enqueued {len(ids)} jobs")
