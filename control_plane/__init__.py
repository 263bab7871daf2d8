"""The control plane: HTTP API, database, dispatch to RunPod, webhook finalisation, ZIPs."""
