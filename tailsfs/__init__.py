"""tailsfs: encrypted, tiered, session-isolated storage for training state."""
from .api import MemoryEnabledTrainer, MemoryTier, TailsMemoryManager
from .errors import (IntegrityError, KeyFileError, NoSpaceError, StoreExistsError, StoreInUseError, TailsError,
                     UnknownSessionError, WeakParametersError, WrongKeyError)

__version__ = "0.1.0"
__all__ = ["TailsMemoryManager", "MemoryTier", "MemoryEnabledTrainer", "TailsError", "IntegrityError",
           "KeyFileError", "NoSpaceError", "StoreExistsError", "StoreInUseError", "UnknownSessionError",
           "WeakParametersError", "WrongKeyError"]
