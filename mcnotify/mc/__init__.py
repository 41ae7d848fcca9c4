"""Marketing Cloud integration: token, HTTP client, REST messaging, SOAP import, SFTP upload."""
