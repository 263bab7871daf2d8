"""Everything the control plane knows about RunPod serverless: its HTTP API (`client`), what
travels over it (`wire`), the one sender of `/run` (`sender`), the webhook (`webhook`), the
`/status` safety net (`poller`) and cancelling RunPod jobs nobody wants (`canceller`).

Nothing outside this package imports `wire`. The facts it relies on: `docs/runpod.md`.
"""
