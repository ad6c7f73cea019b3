"""The ``tailsfs`` command line: administration of stores, mounted or not (see main.py)."""
