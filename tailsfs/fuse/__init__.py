"""The FUSE face: inodes and handles mapped onto the store. No crypto here."""
