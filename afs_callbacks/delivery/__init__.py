"""Durable delivery, everything after a manager admits an event.

``admission`` (valid, bounded, redacted text) → ``writer`` (the thread that stores) →
``outbox`` (SQLite, the one owner of the schema; kept usable through a full disk, a
read-only folder, a lock or a corrupted file, ``faults`` saying what each means) →
``sender`` (one thread per channel:
``priority``, ``budget``, ``limits``, ``retry``, ``flushing``) → the channel. ``lifecycle``
ties them together (flush, close, exit, fork); ``routing`` and ``hooks`` serve the manager;
``cards`` keeps live run cards; ``deathwatch`` reports runs killed without a word.
"""
