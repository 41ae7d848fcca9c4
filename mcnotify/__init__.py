"""mcnotify: deliver app notifications through Salesforce Marketing Cloud."""

__version__ = "0.1.0"
