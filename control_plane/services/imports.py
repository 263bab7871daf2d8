"""Tabular import: a CSV or JSONL file of rows becomes one job, each row one prompt.

A row names its prompt (column `prompt`, or a Jinja2 template rendered with the row's
columns), optionally a reference image (`image`: an upload id or filename of the group, or
the id of a succeeded image of the group), its own `id`, `negative_prompt`, `seed`, `count`
(outputs; by default the config's `outputs_per_image`), `aspect_ratio` and `image_size`.
Each prompt's permutations are expanded (`services/prompts.py`). Every row is checked
before anything is written: bad rows are one InvalidRows (422) naming each row and column,
and nothing is imported.
"""

import itertools
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError
from sqlmodel import Session, col, select

from control_plane import lifecycle
from control_plane.access import Viewer
from control_plane.db import in_batches
from control_plane.errors import (
    InvalidRequest,
    InvalidRows,
    RowProblem,
    describe_validation,
)
from control_plane.models import Job, JobMode, Upload
from control_plane.schemas import AutomaticConfig, WebhookRequest
from control_plane.services import prompts, references, webhooks
from control_plane.services.groups import get_group
from control_plane.services.submissions import (
    check_job_size,
    draw_seed,
    new_output,
    resolve_params,
    write_jobs,
)
from control_plane.services.tables import Table, json_type, read_table, shown
from control_plane.services.uploads import display_name
from control_plane.settings import Settings
from shared.ids import new_id

MAX_PROMPT_CHARS = 10_000  # as a submission's prompt
MAX_NEGATIVE_PROMPT_CHARS = 2_000  # as GenerationConfig's
MAX_ID_CHARS = 200  # Output.prompt_id
MAX_COUNT = 8  # outputs of one row, as outputs_per_image


@dataclass(frozen=True)
class ImportFile:
    """What `POST /api/jobs/import` received: the file's bytes, and the optional template
    and config (JSON text of AutomaticConfig)."""

    group_id: str
    filename: str
    data: bytes
    template: str | None = None
    config: str | None = None
    webhook: str | None = None  # JSON text of WebhookRequest


@dataclass(frozen=True)
class _Unusable:
    """Why a cell's value cannot be used, whichever row holds it."""

    column: str
    message: str


@dataclass(frozen=True)
class _Row:
    """A checked row: what its outputs will be."""

    number: int
    prompt_id: str
    permutations: prompts.Permutations
    reference_ids: list[str]
    seed: int | None
    count: int
    params: dict[str, str | None]

    @property
    def outputs(self) -> int:
        return self.permutations.count * self.count


def import_file(session: Session, settings: Settings, request: ImportFile, viewer: Viewer) -> Job:
    """Check every row, then write and commit the import's job, outputs and dispatches."""
    [job] = write_jobs(
        session,
        request.group_id,
        lambda: _plan(session, settings, request, viewer),
        webhooks.check(settings, parse_webhook(request.webhook)),
    )
    return job


def _plan(session: Session, settings: Settings, request: ImportFile, viewer: Viewer) -> list[Job]:
    group = get_group(session, request.group_id, viewer)
    config = parse_config(request.config)
    job_params = resolve_params(config, settings)
    template = compile_template(request.template)
    name = shown(request.filename or "the file", 100)
    table = read_table(name, request.data, settings.submit_max_images)
    if template is None and "prompt" not in table.columns:
        raise InvalidRequest(
            f"{name} (read as {table.kind}) has no prompt column; its columns are "
            f"{shown(', '.join(table.columns), 200)}. A CSV's first line must be a header "
            "row naming its columns, one of them prompt; or give a template that makes each "
            "row's prompt"
        )
    rows = _RowChecker(session, settings, group.id, config, template, viewer).check(table)
    check_job_size(
        settings,
        sum(row.outputs for row in rows),
        f"{len(rows):,} rows, with their counts and prompt permutations",
    )
    summary = f"import of {name} ({len(rows):,} rows)"
    job = Job(
        group_id=group.id,
        batch_id=new_id("bat"),
        mode=JobMode.IMPORT,
        prompt=request.template if template and request.template else summary,
        config={
            **config.model_dump(exclude_none=True),
            **job_params,
            "seed": draw_seed(config),
            "file": name,
            "rows": len(rows),
        },
    )
    outputs = _outputs(job, rows)
    chunk = lifecycle.dispatch_chunk(settings, outputs, job.config.get("lane"))
    lifecycle.add_job(session, job, outputs, chunk)
    return [job]


def _outputs(job: Job, rows: list[_Row]) -> list[lifecycle.OutputRow]:
    """Row by row, each prompt of its permutations `count` times: a row's own seed counts up
    over its outputs; the others take the job's base seed plus their position."""
    outputs = []
    positions = itertools.count()
    for row in rows:
        copies = itertools.product(row.permutations.prompts(), range(row.count))
        for index, (prompt, _) in enumerate(copies):
            position = next(positions)
            seed = row.seed + index if row.seed is not None else job.config["seed"] + position
            output = new_output(job, position, prompt, row.reference_ids, seed, row.params)
            outputs.append(output | {"prompt_id": row.prompt_id})
    return outputs


def parse_config(text: str | None) -> AutomaticConfig:
    """The form's `config` (JSON of GenerationConfig's fields and outputs_per_image)."""
    if not text or not text.strip():
        return AutomaticConfig()
    try:
        return AutomaticConfig.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidRequest(f"config: {describe_validation(exc.errors())}") from exc


def parse_webhook(text: str | None) -> WebhookRequest | None:
    """The form's `webhook`: JSON of WebhookRequest ({url, events}), or just its URL."""
    if not text or not text.strip():
        return None
    text = text.strip()
    try:
        if text.startswith("{"):
            return WebhookRequest.model_validate_json(text)
        return WebhookRequest(url=text)
    except ValidationError as exc:
        raise InvalidRequest(f"webhook: {describe_validation(exc.errors())}") from exc


def compile_template(text: str | None) -> jinja2.Template | None:
    """The form's `template`, compiled in a sandbox where an undefined variable is an error."""
    if not text or not text.strip():
        return None
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"template: {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
        )
    environment = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        return environment.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequest(f"template: line {exc.lineno}: {exc.message}") from exc


# -- checking rows -------------------------------------------------------------------------


class _RowChecker:
    """Checks every row of a table against the group's uploads and the job's model,
    collecting each problem (row, column, reason) before anything is written."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        group_id: str,
        config: AutomaticConfig,
        template: jinja2.Template | None,
        viewer: Viewer,
    ) -> None:
        self.viewer = viewer
        self.session = session
        self.settings = settings
        self.group_id = group_id
        self.config = config
        self.template = template
        self.problems: list[RowProblem] = []
        self.images: dict[str, str | _Unusable] = {}
        self.params: dict[tuple[str | None, str | None], dict[str, str | None] | _Unusable] = {}

    def check(self, table: Table) -> list[_Row]:
        self.problems = list(table.problems)
        self.images = _find_images(
            self.session,
            self.group_id,
            self.viewer,
            {_text(values.get("image")) for _, values in table.rows},
        )
        rows = [self._row(number, values) for number, values in table.rows]
        if self.problems:
            self.problems.sort(key=lambda problem: problem.row)
            raise InvalidRows(self.problems)
        return [row for row in rows if row is not None]

    def _problem(self, number: int, column: str | None, message: str) -> None:
        self.problems.append(RowProblem(number, column, message))

    def _row(self, number: int, values: dict[str, Any]) -> _Row | None:
        before = len(self.problems)
        permutations = self._prompt(number, values)
        reference_ids = self._image(number, values.get("image"))
        seed = self._whole_number(number, values, "seed", 0, 2**31 - 1)
        count = self._whole_number(number, values, "count", 1, MAX_COUNT)
        params = self._params(number, values)
        prompt_id = self._prompt_id(number, values)
        if len(self.problems) > before or permutations is None or params is None:
            return None
        return _Row(
            number,
            prompt_id,
            permutations,
            reference_ids,
            seed,
            count or self.config.outputs_per_image,
            params,
        )

    def _prompt(self, number: int, values: dict[str, Any]) -> prompts.Permutations | None:
        column = "prompt" if self.template is None else "template"
        if self.template is None:
            prompt = values.get("prompt") or ""
        elif (prompt := self._render(number, values)) is None:
            return None  # its problem is noted
        if not isinstance(prompt, str):
            self._problem(number, column, f"must be text, not {json_type(prompt)}")
            return None
        prompt = prompt.strip()
        if not prompt:
            self._problem(number, column, "the prompt is empty")
            return None
        if len(prompt) > MAX_PROMPT_CHARS:
            self._problem(
                number,
                column,
                f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}",
            )
            return None
        try:
            return prompts.parse(prompt)
        except InvalidRequest as exc:
            self._problem(number, column, exc.message)
            return None

    def _render(self, number: int, values: dict[str, Any]) -> str | None:
        """The template with the row's columns (and `row`, for names that are not
        identifiers); rendering stops once it is longer than any prompt may be."""
        assert self.template is not None
        rendered: list[str] = []
        length = 0
        try:
            for chunk in self.template.generate({"row": values, **values}):
                rendered.append(chunk)
                length += len(chunk)
                if length > MAX_PROMPT_CHARS:
                    break
        except jinja2.UndefinedError as exc:
            self._problem(number, "template", f"{exc.message}: the row has no such column")
            return None
        except Exception as exc:  # the user's template may raise anything
            self._problem(number, "template", shown(f"{type(exc).__name__}: {exc}", 300))
            return None
        return "".join(rendered)

    def _image(self, number: int, value: Any) -> list[str]:
        reference = _text(value)
        if reference is None:
            return []
        found = self.images[reference]
        if isinstance(found, _Unusable):
            self._problem(number, found.column, found.message)
            return []
        return [found]

    def _whole_number(
        self, number: int, values: dict[str, Any], column: str, low: int, high: int
    ) -> int | None:
        value = values.get(column)
        if isinstance(value, str):
            value = value.strip()
            if value.isascii() and value.isdigit() and len(value) < 20:
                value = int(value)
        if value is None or value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        self._problem(number, column, f"must be a whole number from {low} to {high:,}")
        return None

    def _params(self, number: int, values: dict[str, Any]) -> dict[str, str | None] | None:
        """The row's model parameters: its ratio and size checked against the job's model,
        its negative prompt instead of the config's."""
        ratio = self._short_text(number, values, "aspect_ratio", 20)
        size = self._short_text(number, values, "image_size", 20)
        negative = self._short_text(number, values, "negative_prompt", MAX_NEGATIVE_PROMPT_CHARS)
        key = (ratio, size)
        if key not in self.params:
            self.params[key] = self._resolve(ratio, size)
        resolved = self.params[key]
        if isinstance(resolved, _Unusable):
            self._problem(number, resolved.column, resolved.message)
            return None
        return {**resolved, "negative_prompt": negative or resolved["negative_prompt"]}

    def _resolve(self, ratio: str | None, size: str | None) -> dict[str, str | None] | _Unusable:
        """A row's ratio and size as resolve_params takes them; the config's own were
        checked with the job, so what fails is the row's."""
        config = self.config
        if ratio is not None:
            try:
                resolve_params(config.model_copy(update={"aspect_ratio": ratio}), self.settings)
            except InvalidRequest as exc:
                return _Unusable("aspect_ratio", exc.message)
        both = {
            "aspect_ratio": ratio or config.aspect_ratio,
            "image_size": size or config.image_size,
        }
        try:
            return resolve_params(config.model_copy(update=both), self.settings)
        except InvalidRequest as exc:
            return _Unusable("image_size", exc.message)

    def _short_text(
        self, number: int, values: dict[str, Any], column: str, limit: int
    ) -> str | None:
        value = values.get(column)
        if value is not None and not isinstance(value, str):
            self._problem(number, column, f"must be text, not {json_type(value)}")
            return None
        text = _text(value)
        if text is not None and len(text) > limit:
            self._problem(number, column, f"{len(text):,} characters; the limit is {limit:,}")
            return None
        return text

    def _prompt_id(self, number: int, values: dict[str, Any]) -> str:
        value = values.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            self._problem(number, "id", f"must be text or a whole number, not {json_type(value)}")
            return ""
        text = _text(value)
        if text is not None and len(text) > MAX_ID_CHARS:
            self._problem(number, "id", f"{len(text):,} characters; the limit is {MAX_ID_CHARS}")
        return text or f"row-{number}"


def _find_images(
    session: Session, group_id: str, viewer: Viewer, wanted_references: set[str | None]
) -> dict[str, str | _Unusable]:
    """Each reference (an upload id, the id of a succeeded image, or a filename of the
    group) → its id, or the problem with it. A filename is taken as uploads keep theirs
    (`display_name`: no directories, NFC), then compared exactly here: MySQL's collations
    would match `CAT.PNG` and `cat.png ` to `cat.png`."""
    wanted = {reference for reference in wanted_references if reference is not None}
    ids = [reference for reference in wanted if references.well_formed(reference)]
    problems = references.problems(session, group_id, ids, viewer)
    found = {reference for reference in ids if reference not in problems}
    names = {reference: display_name(reference) for reference in wanted - found}
    uploads_named: dict[str, list[str]] = {}
    for batch in in_batches(sorted(set(names.values()))):
        for filename, upload_id in session.exec(
            select(Upload.filename, Upload.id).where(
                col(Upload.filename).in_(batch), Upload.group_id == group_id
            )
        ).all():
            uploads_named.setdefault(filename, []).append(upload_id)
    return {
        reference: reference
        if reference in found
        else _by_name(
            group_id,
            reference,
            sorted(uploads_named.get(names[reference], [])),
            problems.get(reference),
        )
        for reference in wanted
    }


def _by_name(group_id: str, name: str, matches: list[str], problem: str | None) -> str | _Unusable:
    """The upload named `name`; else why not (`problem`: what is wrong with it as an id)."""
    if len(matches) == 1:
        return matches[0]
    if not matches:
        missing = f"no upload named {shown(name, 80)} in group {group_id}"
        return _Unusable("image", problem or missing)
    return _Unusable(
        "image",
        f"{len(matches)} uploads of group {group_id} are named {shown(name, 80)}; use the id "
        f"of the one you mean instead: {', '.join(matches[:5])}{' …' if len(matches) > 5 else ''}",
    )


def _text(value: Any) -> str | None:
    """A cell as text without the spaces around it; None when empty or null."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None
