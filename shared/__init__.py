"""What the control plane and the worker share: the job contract, storage, image helpers."""
