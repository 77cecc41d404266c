"""renkei-agent: the terminal agent (情報連携端末) on a municipality's appliance.

Once a day after business hours, and when staff ask, it downloads the ministry's
notice batches into the inbox and uploads the municipality notice files staff
dropped into the outbox.  Every state change is a transaction in a local
SQLite queue and every file placement is atomic, so a run cut short by a
power failure is finished by the next one.
"""

__version__ = "0.1.0"
