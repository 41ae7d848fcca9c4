"""Marketing Cloud integration: token, HTTP client, REST messaging, SOAP import, SFTP upload.

This package's modules import requests / paramiko; import them where they are used, not at start-up.
"""

DUPLICATE_MESSAGE_KEY = "109110"  # MC refuses a reused messageKey: the message was accepted earlier
