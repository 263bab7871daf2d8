"""The TLS context the platform's HTTP clients verify servers with."""

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One per process, shared by every httpx client: making one reads the CA bundle (about
    20 ms of CPU), which a client made per dispatch (the worker's progress posts) paid each
    time."""
    return httpx.create_ssl_context()
