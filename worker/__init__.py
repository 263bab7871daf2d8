"""The RunPod serverless worker: handler, providers, and the local RunPod-compatible endpoint."""
