"""Signing keys: key store, rotation, JWKS, token signing and verification."""
