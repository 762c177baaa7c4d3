"""Reusable contract tests, as keyring ships ``BackendBasicTests``: a new master-key provider
(KMS, HSM...) or plugin storage proves itself with the tests secure_kv's own pass.

Example (in your own test suite)::

    from secure_kv.testing.providers import MasterKeyProviderContract
    from secure_kv.testing.storage import PluginStorageContract

    class TestMyKms(MasterKeyProviderContract):
        def make_provider(self):
            return MyKmsMasterKey("arn:aws:kms:...")

    class TestMyStorage(PluginStorageContract):
        ...  # override the make_storage fixture (see secure_kv.testing.storage)
"""
