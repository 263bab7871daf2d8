"""A client of a running pixelfleet control plane: the `Client` class and the CLI's commands
(`pixelfleet generate|jobs|download`, registered by `client.cli.register`)."""

from client.api import Client, FileUpload, UploadAnswer, UploadedImage
from client.errors import ApiError, ApiUnreachable, ClientError
from client.files import LocalFile

__all__ = [
    "ApiError",
    "ApiUnreachable",
    "Client",
    "ClientError",
    "FileUpload",
    "LocalFile",
    "UploadAnswer",
    "UploadedImage",
]
