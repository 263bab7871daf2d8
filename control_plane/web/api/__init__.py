"""The JSON API under /api: thin routes that validate, call a service, present the result."""
