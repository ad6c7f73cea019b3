"""How one memory lies on disk: header, encrypted metadata, chunks.

Documented byte by byte in docs/FORMAT.md. This layer encodes and decodes;
the bytes move through a :class:`Backing` the store hands in, so the store
stays the only code that touches the backing directory.
"""
