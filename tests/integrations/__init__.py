"""secure_kv.integrations: Dify, against the real SDK and an in-process daemon."""
