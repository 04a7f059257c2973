"""Credentials at rest: encrypted with a master key, decrypted only at the last hop."""
