from mcnotify.state.store import Batch, Notification, StateStore, Token

__all__ = ["Batch", "Notification", "StateStore", "Token"]
