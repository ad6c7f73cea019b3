"""The engine: tiers, sessions, the TTL index, erasure and the audit trail.

The only code that touches the backing directory. Faces (the FUSE mount and
the Python API) call :class:`tailsfs.store.engine.Store` and the trees it
hands out; they never see a key or a host path.
"""
