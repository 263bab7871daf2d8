"""Reading multipart forms, for both front ends."""

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from control_plane.errors import InvalidRequest
from control_plane.platform import Platform
from control_plane.services.uploads import IncomingFile

MAX_FIELDS = 100


async def read_form(
    request: Request,
    platform: Platform,
    *,
    max_file_bytes: int | None = None,
    max_files: int | None = None,
) -> FormData:
    """The multipart form, within the upload limits (or the ones given); a 422 that says why
    if unreadable.

    No file is spooled beyond the per-file limit (plus one byte): a larger file keeps its
    true size, so the upload service rejects it by size as usual.
    """
    settings = platform.settings
    max_files = max_files or settings.upload_max_files
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with aclosing(request.stream()) as stream:
                parser = BoundedFileParser(
                    request.headers,
                    stream,
                    max_file_bytes=max_file_bytes or settings.upload_max_file_bytes,
                    max_files=max_files,
                    max_fields=MAX_FIELDS,
                )
                return await parser.parse()
        return await request.form(max_files=max_files, max_fields=MAX_FIELDS)
    except MultiPartException as exc:  # a body the parser cannot read
        raise InvalidRequest(f"could not read the multipart body: {exc.message}") from exc


IN_MEMORY_BUDGET = 32 * 1024 * 1024  # of small files held in memory, per request


class BoundedFileParser(MultiPartParser):
    """Starlette's multipart parser, keeping at most `max_file_bytes + 1` bytes of each file
    and counting the rest: the file's `size` is its true size. Small files stay in memory
    (Starlette spools each up to 1 MiB) only until the request has read IN_MEMORY_BUDGET
    bytes of files; later files go straight to disk, so a request of thousands of small files
    never holds gigabytes."""

    def __init__(
        self,
        headers: Headers,
        stream: AsyncGenerator[bytes, None],
        *,
        max_file_bytes: int,
        max_files: int,
        max_fields: int,
    ) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=max_fields)
        self.max_file_bytes = max_file_bytes
        self._part_bytes = 0
        self._true_sizes: list[tuple[UploadFile, int]] = []

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_bytes = 0
        if sum(size for _, size in self._true_sizes) > IN_MEMORY_BUDGET:
            self.spool_max_size = 1  # Starlette spools each file up to this (0: no limit)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None:
            super().on_part_data(data, start, end)
            return
        room = self.max_file_bytes + 1 - self._part_bytes
        self._part_bytes += end - start
        if room > 0:
            super().on_part_data(data, start, min(end, start + room))

    def on_part_end(self) -> None:
        super().on_part_end()
        if self._current_part.file is not None:
            self._true_sizes.append((self._current_part.file, self._part_bytes))

    async def parse(self) -> FormData:
        form = await super().parse()
        for file, size in self._true_sizes:
            file.size = size
        return form


def incoming_files(form: FormData, field: str = "files") -> list[IncomingFile]:
    """The files of `field`, as the upload service takes them."""
    return [
        IncomingFile(item.filename or "", item.size or 0, item.file)
        for item in form.getlist(field)
        if isinstance(item, UploadFile)
    ]


def chosen_files(files: Sequence[IncomingFile]) -> list[IncomingFile]:
    """Without the empty part a browser sends when no file was chosen."""
    return [incoming for incoming in files if incoming.filename or incoming.size]
