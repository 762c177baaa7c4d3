"""The tamper-evident audit log: events and their digests, signing keys, the log itself,
verify, and the maintenance (anchor, prune) and reports built on them."""
