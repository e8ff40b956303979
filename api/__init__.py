"""The HTTP API: validates, authorises, writes the request row and starts workflows."""
