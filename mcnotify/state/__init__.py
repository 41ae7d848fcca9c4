from mcnotify.state.interface import Batch, Notification, NotificationRecord, Store, TokenCache
from mcnotify.state.states import BatchStatus, Delivery, StepStatus
from mcnotify.state.store import StateStore
from mcnotify.state.tokens import Token

__all__ = [
    "Batch",
    "BatchStatus",
    "Delivery",
    "Notification",
    "NotificationRecord",
    "StateStore",
    "StepStatus",
    "Store",
    "Token",
    "TokenCache",
]
