"""Cryptographic primitives: key derivation, key wrapping, chunk AEAD, name encryption.

Knows nothing of files, tiers or FUSE. Everything above it passes bytes in
and gets bytes out; every failure to authenticate raises
:class:`tailsfs.errors.IntegrityError` (or ``WrongKeyError`` for key unwrapping).
"""
