"""The web UI: server-rendered pages over the same actions and services as the JSON API."""
