"""Reusable contract tests: a new master-key provider (KMS, HSM...) proves itself with them.

Example (in your own test suite)::

    from secure_kv.testing.providers import MasterKeyProviderContract

    class TestMyKms(MasterKeyProviderContract):
        def make_provider(self):
            return MyKmsMasterKey("arn:aws:kms:...")
"""
