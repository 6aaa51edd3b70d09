"""Secrets manager: Vault KV version 2 compatible, envelope-encrypted, audited."""
