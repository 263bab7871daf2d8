"""The client commands of `pixelfleet` (a client of a running control plane): `generate`,
`jobs ls|show|watch|cancel|retry`, `download`, `upload` (a folder with attributes, e.g. a
reference pool), `preset create|examples|show|reset`, `character create|pack|show`,
`persona create|watch|show`, `vary` and `rerun`. `register(app)` adds them.

Exit codes: 0 every image succeeded (every persona completed); 1 some image failed or was
blocked, an input file was rejected, or a persona failed, or nothing was submitted (over the
spend cap, or the estimate not confirmed); 2 bad usage or an error from the
API (its message, no traceback); 130 Ctrl-C (a job being watched keeps running).
"""

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.filesize import decimal

from client.api import API_URL_ENV, DEFAULT_API_URL, Client, FileUpload
from client.errors import ApiError, ClientError
from client.files import images_in
from client.outcome import (
    EXIT_INTERRUPTED,
    EXIT_NOT_SUBMITTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    Outcome,
    lane_lines,
)
from client.progress import Display
from control_plane.schemas import (
    CatalogCreate,
    CatalogPublic,
    Estimate,
    GroupPublic,
    JobDetail,
    JobPublic,
    PersonaDetail,
    PersonaPublic,
    PresetDetail,
    PresetExamplesResponse,
    Progress,
    SubmitResponse,
)


class Strength(StrEnum):
    subtle = "subtle"
    strong = "strong"


ApiUrl = Annotated[
    str,
    typer.Option("--api", envvar=API_URL_ENV, help="the control plane's URL", show_envvar=True),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="print machine-readable JSON instead of progress bars")
]
GroupOption = Annotated[
    str | None, typer.Option("--group", help="group name or id (created when no group has it)")
]
# Generation settings, the same on every command that makes images
ModelOption = Annotated[str | None, typer.Option(help="image model")]
AspectRatioOption = Annotated[str | None, typer.Option(help="e.g. 1:1, 16:9, 3:4")]
ImageSizeOption = Annotated[str | None, typer.Option(help="e.g. 1K, 2K")]
NegativePromptOption = Annotated[str | None, typer.Option(help="what to avoid")]
LaneOption = Annotated[
    str | None,
    typer.Option(
        metavar="online|batch",
        help="batch: Gemini batches at half price, done within --batch-deadline-s, else "
        "made online (default: online, now)",
    ),
]
BatchDeadlineOption = Annotated[
    int | None,
    typer.Option(
        metavar="SECONDS",
        help="with --lane batch: when images still in a batch go online (default: a day)",
    ),
]
ConfirmAbove = Annotated[
    float | None,
    typer.Option(min=0, metavar="USD", help="ask before submitting when the estimate is above"),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="never ask (see --confirm-above)")]


@dataclass
class Run:
    """One command's connection to the API and its way of showing things."""

    client: Client
    display: Display
    as_json: bool
    api_url: str


def register(app: typer.Typer) -> None:
    """Add the client commands to the `pixelfleet` app."""
    app.command()(generate)
    app.add_typer(jobs_app, name="jobs")
    app.command()(download)
    app.add_typer(persona_app, name="persona")
    app.command()(upload)
    app.add_typer(preset_app, name="preset")
    app.add_typer(character_app, name="character")
    app.command()(vary)
    app.command()(rerun)


@contextmanager
def _session(api_url: str, as_json: bool, on_interrupt: str = "interrupted") -> Iterator[Run]:
    """A run against the API; its errors are a message and exit code 2, Ctrl-C is 130."""
    try:
        with Client(api_url) as client:
            yield Run(client, Display(not as_json), as_json, api_url)
    except ApiError as exc:
        if exc.status != HTTPStatus.PAYMENT_REQUIRED:
            _say_error(exc, as_json)
            raise typer.Exit(EXIT_USAGE) from None
        typer.echo(f"not submitted: {exc.detail}", err=True)  # over the spend cap
        if as_json:
            _print_json({"error": {"status": exc.status, "detail": exc.detail}})
        raise typer.Exit(EXIT_NOT_SUBMITTED) from None
    except ClientError as exc:
        _say_error(exc, as_json)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        typer.echo(on_interrupt, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _usage(message: str) -> typer.Exit:
    """Say what is wrong with the command line; the caller raises the returned exit (code 2)."""
    typer.echo(f"usage error: {message} (see --help)", err=True)
    return typer.Exit(EXIT_USAGE)


def _say_error(exc: ClientError, as_json: bool) -> None:
    typer.echo(f"error: {exc}", err=True)
    errors = exc.errors if isinstance(exc, ApiError) and exc.errors else []
    for error in errors:
        typer.echo(f"  {_describe(error)}", err=True)
    if as_json:
        problem: dict[str, Any] = {"message": str(exc)}
        if isinstance(exc, ApiError):
            problem |= {"status": exc.status, "detail": exc.detail, "errors": exc.errors}
        _print_json({"error": problem})


def _describe(error: Any) -> str:
    """One entry of a 422's `errors`: a field of a body, or a row of an imported file."""
    if isinstance(error, dict) and "msg" in error:
        where = ".".join(str(part) for part in error.get("loc", []))
        return f"{where}: {error['msg']}" if where else str(error["msg"])
    if isinstance(error, dict) and "row" in error and "message" in error:
        column = f", column {error['column']}" if error.get("column") else ""
        return f"row {error['row']}{column}: {error['message']}"
    return json.dumps(error)


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# generate ---------------------------------------------------------------------------------
def generate(
    folder: Annotated[
        Path | None,
        typer.Argument(
            metavar="DIR",
            help="a folder of images: one automatic job over them",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="the prompt (with a folder)")] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="a prompt catalog (JSON): one job per --tag")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="catalog tag (repeat for more)")] = None,
    count: Annotated[str | None, typer.Option(help="prompts per tag: a number or 'all'")] = None,
    csv: Annotated[Path | None, typer.Option(help="a CSV or JSONL file of rows: one job")] = None,
    images: Annotated[
        Path | None, typer.Option(help="with --csv: upload this folder's images first")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="with --csv: a Jinja2 template rendered per row")
    ] = None,
    group: GroupOption = None,
    model: ModelOption = None,
    aspect_ratio: AspectRatioOption = None,
    image_size: ImageSizeOption = None,
    seed: Annotated[int | None, typer.Option(help="seed of the first image")] = None,
    negative_prompt: NegativePromptOption = None,
    outputs_per_image: Annotated[
        int | None, typer.Option(help="images generated per input image (1-8)")
    ] = None,
    lane: LaneOption = None,
    batch_deadline_s: BatchDeadlineOption = None,
    out: Annotated[
        Path | None, typer.Option(help="where to save the ZIP (default: <group name>.zip)")
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="your URL, POSTed a signed message when each job ends (see the README)",
        ),
    ] = None,
    confirm_above: ConfirmAbove = None,
    yes: Yes = False,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Generate a dataset: upload, submit, watch the job(s) with progress, download the ZIP.
    The estimate is shown before submitting; above --confirm-above USD you are asked first.

    \b
    pixelfleet generate ./photos --prompt "a watercolour painting" --out cats.zip
    pixelfleet generate --catalog prompts.json --tag male --tag female --count 5
    pixelfleet generate --csv rows.csv --images ./photos --template "a {{ colour }} bird"
    """
    _check_one_source(folder, catalog, csv)
    config = _config(
        model=model,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        seed=seed,
        negative_prompt=negative_prompt,
        outputs_per_image=outputs_per_image,
        lane=lane,
        batch_deadline_s=batch_deadline_s,
    )
    hint = "interrupted; run the same command again to go on (uploaded files are skipped)"
    extra: dict[str, Any] = {"webhook": {"url": webhook}} if webhook else {}
    with _session(api, as_json, on_interrupt=hint) as run:
        gate = CostGate(run, confirm_above, yes)
        if folder is not None:
            found, uploads, submitted = _generate_from_folder(
                run, gate, folder, prompt, group, config, extra
            )
        elif catalog is not None:
            found, uploads, submitted = _generate_from_catalog(
                run, gate, catalog, tag or [], _count(count), group, config, extra
            )
        else:
            assert csv is not None
            found, uploads, submitted = _generate_from_rows(
                run, gate, csv, images, template, group, config, extra
            )
        _finish(run, found, uploads, submitted, out)


def _check_one_source(folder: Path | None, catalog: Path | None, csv: Path | None) -> None:
    given = [
        name
        for name, value in (("DIR", folder), ("--catalog", catalog), ("--csv", csv))
        if value is not None
    ]
    if len(given) != 1:
        raise _usage(
            "give one source: a folder (DIR --prompt ...), --catalog FILE.json or --csv FILE"
            + (f" (not {' and '.join(given)})" if given else "")
        )


def _config(**settings: object) -> dict[str, object]:
    return {name: value for name, value in settings.items() if value is not None}


def _count(count: str | None) -> int | str:
    if count is None:
        raise _usage("--catalog needs --count N (prompts per tag) or --count all")
    if count == "all":
        return count
    if count.isdigit() and int(count) > 0:
        return int(count)
    raise _usage(f"--count must be a positive number or 'all', not {count!r}")


def _generate_from_folder(
    run: Run,
    gate: "CostGate",
    folder: Path,
    prompt: str | None,
    group: str | None,
    config: dict[str, object],
    extra: dict[str, Any],
) -> tuple[GroupPublic, list[FileUpload], SubmitResponse]:
    if not prompt:
        raise _usage("a folder needs --prompt")
    paths = _images_of(folder)
    found = _group(run, group or folder.resolve().name)
    uploads = _upload(run, found, paths)
    image_ids = list(dict.fromkeys(u.upload_id for u in uploads if u.upload_id is not None))
    if not image_ids:
        raise ClientError(f"no image of {folder} was accepted: {_rejections(uploads)}")
    body = {
        "group_id": found.id,
        "mode": "automatic",
        "prompt": prompt,
        "images": image_ids,
        "config": config,
        **extra,
    }
    gate.check(run.client.estimate(body))
    return found, uploads, run.client.submit(body)


def _generate_from_catalog(
    run: Run,
    gate: "CostGate",
    catalog: Path,
    tags: list[str],
    count: int | str,
    group: str | None,
    config: dict[str, object],
    extra: dict[str, Any],
) -> tuple[GroupPublic, list[FileUpload], SubmitResponse]:
    if not tags:
        raise _usage("--catalog needs at least one --tag")
    body = _json_file(catalog)
    found = _group(run, group or catalog.stem)
    catalog_id = _catalog(run, body)
    submission = {
        "group_id": found.id,
        "mode": "catalog",
        "catalog_id": catalog_id,
        "tags": tags,
        "count": count,
        "config": config,
    }
    gate.check(run.client.estimate(submission))
    return found, [], run.client.submit({**submission, **extra})


def _catalog(run: Run, body: Any) -> str:
    """The id of a catalog with exactly these prompts: one made by an earlier run, or new."""
    try:
        wanted = CatalogCreate.model_validate(body)
    except ValidationError:  # sent as it is: the server names each entry at fault
        wanted = None
    for existing in run.client.catalogs() if wanted else ():
        if _same_catalog(run, existing, wanted):
            _note(run, f"catalog {existing.name!r} ({existing.id}): the same prompts, reused")
            return existing.id
    created = run.client.create_catalog(body)
    _note(run, f"created catalog {created.name!r} ({created.id}): {created.tag_counts}")
    return created.id


def _same_catalog(run: Run, existing: CatalogPublic, wanted: CatalogCreate | None) -> bool:
    return (
        wanted is not None
        and existing.name == wanted.name
        and run.client.catalog(existing.id).prompts == wanted.prompts
    )


def _generate_from_rows(
    run: Run,
    gate: "CostGate",
    rows: Path,
    folder: Path | None,
    template: str | None,
    group: str | None,
    config: dict[str, object],
    extra: dict[str, Any],
) -> tuple[GroupPublic, list[FileUpload], SubmitResponse]:
    if not rows.is_file():
        raise _usage(f"--csv {rows}: no such file")
    paths = _images_of(folder) if folder is not None else []
    found = _group(run, group or (folder.resolve().name if folder is not None else rows.stem))
    uploads = _upload(run, found, paths) if paths else []
    gate.check(run.client.estimate_import(found.id, rows, template=template, config=config))
    submitted = run.client.import_rows(
        found.id, rows, template=template, config=config, webhook=extra.get("webhook")
    )
    return found, uploads, submitted


@dataclass
class CostGate:
    """Shows a submission's estimate before it is sent, and above `confirm_above` USD asks
    whether to go on (unless `yes`); declining exits with code 1, nothing submitted."""

    run: Run
    confirm_above: float | None
    yes: bool

    def check(self, estimate: Estimate) -> None:
        _note(self.run, f"estimate: {describe_estimate(estimate)}")
        if self.yes or self.confirm_above is None or estimate.cost_usd <= self.confirm_above:
            return
        question = f"submit for about ${estimate.cost_usd:,.2f} (above ${self.confirm_above:,.2f})?"
        try:
            go_on = typer.confirm(question, err=True)
        except typer.Abort:  # no answer (stdin closed): not a yes
            go_on = False
        if not go_on:
            _note(self.run, "nothing submitted")
            raise typer.Exit(EXIT_NOT_SUBMITTED)


def describe_estimate(estimate: Estimate) -> str:
    """`12 images, about $1.21 (gemini-3.1-flash-image: 12 x $0.1010)`."""
    parts = [
        f"{model}: {share.images:,} x ${share.cost_usd / share.images:,.4f}"
        for model, share in estimate.by_model.items()
        if share.images
    ]
    return f"{estimate.images:,} images, about ${estimate.cost_usd:,.2f} ({'; '.join(parts)})"


def _images_of(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise _usage(f"{folder} is not a folder")
    paths = images_in(folder)
    if not paths:
        raise _usage(f"no images (.png, .jpg, .jpeg, .webp) in {folder}")
    return paths


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise _usage(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise _usage(f"{path} is not JSON: {exc}") from None


def _group(run: Run, name_or_id: str) -> GroupPublic:
    found = run.client.find_group(name_or_id)
    if found is None:
        found = run.client.create_group(name_or_id)
        _note(run, f"created group {found.name!r} ({found.id})")
    else:
        _note(run, f"group {found.name!r} ({found.id})")
    return found


def _upload(run: Run, group: GroupPublic, paths: list[Path]) -> list[FileUpload]:
    with run.display.uploading(len(paths)) as bars:
        uploads = run.client.upload_folder(
            group.id, paths, on_hashed=bars.hashed, on_plan=bars.planned, on_batch=bars.sent
        )
    skipped = sum(upload.state in ("skipped", "duplicate") for upload in uploads)
    if skipped:
        _note(run, f"{skipped} of {len(uploads)} file(s) already in the group: skipped")
    return uploads


def _rejections(uploads: Sequence[FileUpload]) -> str:
    return "; ".join(f"{u.file.path.name}: {u.reason}" for u in uploads if u.state == "rejected")


def _finish(
    run: Run,
    group: GroupPublic,
    uploads: list[FileUpload],
    submitted: SubmitResponse,
    out: Path | None,
) -> None:
    """Watch the submitted jobs, download their ZIP, summarise; exit with the outcome's code."""
    job_ids = [job.id for job in submitted.jobs]
    _note(run, f"submitted {len(job_ids)} job(s): {', '.join(job_ids)}")
    jobs = _watch(run, job_ids)
    destination = out or Path(f"{_file_stem(group)}.zip")
    with run.display.downloading(f"downloading {destination.name}") as bar:
        size = run.client.download_zip(
            group.id, destination, job_ids=job_ids, on_progress=bar.chunk
        )
    outcome = Outcome(jobs=jobs, uploads=uploads, zip_path=str(destination), zip_bytes=size)
    _report(run, outcome, group)


def _watch(run: Run, job_ids: list[str]) -> list[JobDetail]:
    """Follow the jobs with progress bars until they end; Ctrl-C leaves them running."""
    jobs: list[JobDetail] = []
    try:
        with run.display.watching() as bars:
            for jobs in run.client.follow(job_ids):
                bars.update(jobs)
    except KeyboardInterrupt:
        again = "pixelfleet jobs watch " + " ".join(job_ids)
        raise _stopped_watching(run, "the job(s) keep running", again, {"jobs": job_ids}) from None
    return jobs


def _stopped_watching(run: Run, going_on: str, again: str, ids: Mapping[str, object]) -> typer.Exit:
    """Say that what was watched goes on, and how to watch it again; the Ctrl-C exit."""
    if run.api_url.rstrip("/") != DEFAULT_API_URL:
        again += f" --api {run.api_url}"
    typer.echo(f"stopped watching; {going_on} on the server. Watch again with: {again}", err=True)
    if run.as_json:
        _print_json({"interrupted": True, **ids, "watch": again})
    return typer.Exit(EXIT_INTERRUPTED)


def _report(run: Run, outcome: Outcome, group: GroupPublic | None = None) -> None:
    if run.as_json:
        found = {"group": {"id": group.id, "name": group.name}} if group else {}
        _print_json({**found, **outcome.as_json()})
    else:
        for line in outcome.lines():
            typer.echo(line)
    raise typer.Exit(outcome.exit_code)


def _note(run: Run, message: str) -> None:
    """A step worth telling a person (stderr, so stdout keeps the results)."""
    typer.echo(message, err=True)


def _file_stem(group: GroupPublic) -> str:
    return re.sub(r"[^\w.-]+", "-", group.name).strip("-.") or group.id


# jobs -------------------------------------------------------------------------------------
jobs_app = typer.Typer(help="List, inspect, watch, cancel and retry jobs.", no_args_is_help=True)


@jobs_app.command("ls")
def jobs_ls(
    group: Annotated[str | None, typer.Option(help="only this group (name or id)")] = None,
    status: Annotated[str | None, typer.Option(help="queued, processing, completed...")] = None,
    cursor: Annotated[
        str | None, typer.Option(help="the page after this one (printed under each page)")
    ] = None,
    page: Annotated[int | None, typer.Option(min=1, help="a page by number instead")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Jobs, newest first, a page at a time (`--cursor` from the line under a page)."""
    with _session(api, as_json) as run:
        group_id = _existing_group(run, group).id if group else None
        listed = run.client.jobs(
            group_id=group_id,
            status=status,
            cursor=cursor,
            page=page,
            limit=limit,
            with_total=True,
        )
    if as_json:
        _print_json(listed.model_dump(mode="json"))
        return
    for job in listed.data:
        done = job.progress.total - job.progress.pending
        typer.echo(
            f"{job.id}  {job.status:<10} {job.mode:<14} {done}/{job.progress.total}  "
            f"{job.created_at:%Y-%m-%d %H:%M}  {job.group_id}"
        )
    more = f"; next page: --cursor {listed.next}" if listed.next else ""
    typer.echo(f"{len(listed.data)} of {listed.total} job(s){more}", err=True)


@jobs_app.command("show")
def jobs_show(job_id: str, api: ApiUrl = DEFAULT_API_URL, as_json: AsJson = False) -> None:
    """One job: its settings, progress, cost and why images failed."""
    with _session(api, as_json) as run:
        job = run.client.job(job_id)
    if as_json:
        _print_json(job.model_dump(mode="json"))
        return
    typer.echo(f"job {job.id} in group {job.group_id}: {job.mode}, {job.status}")
    typer.echo(f"prompt: {job.prompt}")
    typer.echo(f"config: {json.dumps(job.config)}")
    for line in [*lane_lines(job), *Outcome(jobs=[job]).lines()]:
        typer.echo(line)
    typer.echo(f"cost so far: ${job.cost_usd:.4f}")


@jobs_app.command("watch")
def jobs_watch(
    job_ids: Annotated[list[str], typer.Argument(help="one or more job ids")],
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Follow jobs with a progress bar until they end; exit 0 if every image succeeded."""
    with _session(api, as_json) as run:
        jobs = _watch(run, job_ids)
        _report(run, Outcome(jobs=jobs))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, api: ApiUrl = DEFAULT_API_URL, as_json: AsJson = False) -> None:
    """Cancel a job: its unfinished images fail as "cancelled"."""
    with _session(api, as_json) as run:
        job = run.client.cancel(job_id)
    if as_json:
        _print_json(job.model_dump(mode="json"))
    else:
        typer.echo(f"job {job.id}: {job.status}")


@jobs_app.command("retry")
def jobs_retry(job_id: str, api: ApiUrl = DEFAULT_API_URL, as_json: AsJson = False) -> None:
    """Queue a job's failed images again (watch it with `pixelfleet jobs watch ID`)."""
    with _session(api, as_json) as run:
        job = run.client.retry(job_id)
    if as_json:
        _print_json(job.model_dump(mode="json"))
    else:
        typer.echo(f"job {job.id}: {job.status}, {job.progress.pending} image(s) queued again")


# download ---------------------------------------------------------------------------------
def download(
    group: Annotated[str, typer.Argument(help="group name or id")],
    job: Annotated[list[str] | None, typer.Option(help="only this job (repeat for more)")] = None,
    include_inputs: Annotated[
        bool, typer.Option(help="add the reference images under inputs/")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="where to save it (default: <group name>.zip)")
    ] = None,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Download a group's images as a ZIP (with manifest.jsonl)."""
    with _session(api, as_json) as run:
        found = _existing_group(run, group)
        destination = out or Path(f"{_file_stem(found)}.zip")
        with run.display.downloading(f"downloading {destination.name}") as bar:
            size = run.client.download_zip(
                found.id,
                destination,
                job_ids=job or [],
                include_inputs=include_inputs,
                on_progress=bar.chunk,
            )
    if as_json:
        _print_json(
            {
                "group": {"id": found.id, "name": found.name},
                "zip": {"path": str(destination), "bytes": size},
            }
        )
    else:
        typer.echo(f"saved group {found.name!r} to {destination} ({decimal(size)})")


def _existing_group(run: Run, name_or_id: str) -> GroupPublic:
    found = run.client.find_group(name_or_id)
    if found is None:
        raise ClientError(f"no group is named {name_or_id!r} or has that id")
    return found


# persona ----------------------------------------------------------------------------------
persona_app = typer.Typer(
    help="Create personas (data, a base portrait, 4 variations) and follow them.",
    no_args_is_help=True,
)
DEFAULT_PERSONA_GROUP = "personas"


@persona_app.command("create")
def persona_create(
    group: GroupOption = None,
    count: Annotated[int, typer.Option(min=1, max=20, help="personas to create (1-20)")] = 1,
    brief: Annotated[str | None, typer.Option(help="what the personas should be like")] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE every persona has, e.g. gender=female (repeat for more)"),
    ] = None,
    model: ModelOption = None,
    aspect_ratio: AspectRatioOption = None,
    image_size: ImageSizeOption = None,
    seed: Annotated[int | None, typer.Option(help="seed of the first persona")] = None,
    text_model: Annotated[str | None, typer.Option(help="the model writing their data")] = None,
    watch: Annotated[bool, typer.Option(help="follow them until each ends")] = False,
    confirm_above: ConfirmAbove = None,
    yes: Yes = False,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Create personas in a group (default: "personas", created if missing).

    \b
    pixelfleet persona create --group cast --count 3 --attribute gender=female --watch
    """
    body = {
        "count": count,
        "brief": brief,
        "attributes": _attributes(attribute or []) or None,
        "config": _config(model=model, aspect_ratio=aspect_ratio, image_size=image_size, seed=seed),
        "text_model": text_model,
    }
    with _session(api, as_json) as run:
        found = _group(run, group or DEFAULT_PERSONA_GROUP)
        request = _config(group_id=found.id, **body)
        CostGate(run, confirm_above, yes).check(run.client.estimate({"mode": "persona", **request}))
        created = run.client.create_personas(request)
        ids = ", ".join(persona.id for persona in created.personas)
        _note(run, f"created {len(created.personas)} persona(s) in batch {created.batch_id}: {ids}")
        personas = _watch_personas(run, created.batch_id) if watch else created.personas
        _report_personas(run, created.batch_id, personas, ended=watch)


@persona_app.command("watch")
def persona_watch(
    batch_id: Annotated[str, typer.Argument(help="the batch id `persona create` printed")],
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Follow a batch of personas until each is completed or failed."""
    with _session(api, as_json) as run:
        personas = _watch_personas(run, batch_id)
        if not personas:
            raise ClientError(f"batch {batch_id} has no personas")
        _report_personas(run, batch_id, personas, ended=True)


@persona_app.command("show")
def persona_show(persona_id: str, api: ApiUrl = DEFAULT_API_URL, as_json: AsJson = False) -> None:
    """One persona: its data, status, error log and images."""
    with _session(api, as_json) as run:
        persona = run.client.persona(persona_id)
    if as_json:
        _print_json(persona.model_dump(mode="json"))
        return
    for line in _persona_detail_lines(persona):
        typer.echo(line)


def _watch_personas(run: Run, batch_id: str) -> list[PersonaPublic]:
    """Follow the batch with a bar per persona until each ends; Ctrl-C leaves them going."""
    personas: list[PersonaPublic] = []
    try:
        with run.display.watching_personas() as bars:
            for personas in run.client.follow_personas(batch_id):
                bars.update(personas)
    except KeyboardInterrupt:
        again = f"pixelfleet persona watch {batch_id}"
        ids = {"batch_id": batch_id}
        raise _stopped_watching(run, "the personas keep going", again, ids) from None
    return personas


def _report_personas(
    run: Run, batch_id: str, personas: Sequence[PersonaPublic], *, ended: bool
) -> None:
    """Each persona's status and error log; exit 1 if one failed (else 0)."""
    failed = any(persona.status == "failed" for persona in personas)
    code = EXIT_SOME_FAILED if failed else EXIT_OK
    if run.as_json:
        listed = [
            persona.model_dump(
                mode="json",
                include={"id", "name", "status", "stage", "error_log", "base_output_id"},
            )
            for persona in personas
        ]
        _print_json({"batch_id": batch_id, "personas": listed, "exit_code": code})
        raise typer.Exit(code)
    for persona in personas:
        typer.echo(f"persona {persona.id} ({persona.name or 'unnamed'}): {persona.status}")
        for entry in persona.error_log:
            typer.echo(f"  {entry}")
    if ended:
        done = sum(persona.status == "completed" for persona in personas)
        typer.echo(f"{done} of {len(personas)} persona(s) completed (batch {batch_id})")
    raise typer.Exit(code)


def _persona_detail_lines(persona: PersonaDetail) -> list[str]:
    lines = [
        f"persona {persona.id} ({persona.name or 'unnamed'}) in group {persona.group_id}: "
        f"{persona.status}, stage {persona.stage}"
    ]
    for key, value in (persona.data or {}).items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        lines.append(f"  {key}: {shown}")
    images = [persona.images.base] if persona.images.base else []
    for name, image in zip(
        ["base"] + [f"variation {n}" for n in range(1, 5)],
        images + persona.images.variations,
        strict=False,
    ):
        lines.append(f"  {name}: {image.status} {image.url or image.error or ''}".rstrip())
    lines += [f"  error: {entry}" for entry in persona.error_log]
    return lines


# upload -----------------------------------------------------------------------------------
AttributeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--attribute",
        help="key=value given to every new upload, e.g. gender=female (repeat for more); "
        "true, false and numbers are read as such",
    ),
]


def upload(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="a folder of images")],
    group: GroupOption = None,
    attribute: AttributeOption = None,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Upload a folder's images into a group (e.g. a reference pool for presets), giving each
    new one the --attribute pairs; files the group already has are skipped and keep theirs.

    \b
    pixelfleet upload ./women --group models --attribute gender=female
    pixelfleet upload ./men --group models --attribute gender=male
    """
    attributes = _attributes(attribute or [])
    paths = _images_of(folder)
    with _session(api, as_json) as run:
        found = _group(run, group or folder.resolve().name)
        with run.display.uploading(len(paths)) as bars:
            uploads = run.client.upload_folder(
                found.id,
                paths,
                on_hashed=bars.hashed,
                on_plan=bars.planned,
                on_batch=bars.sent,
                attributes=attributes,
            )
        _report(run, Outcome(uploads=uploads), found)


def _attributes(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs as attributes: JSON scalars (true, 28, 1.5) as such, else strings."""
    attributes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise _usage(f"--attribute takes key=value, not {pair!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        attributes[key.strip()] = value if isinstance(value, bool | int | float) else text
    return attributes


# preset -----------------------------------------------------------------------------------
preset_app = typer.Typer(
    help="Presets: a prompt and settings whose examples are made over references picked from "
    "a pool (a group of uploads with attributes, see `pixelfleet upload --attribute`).",
    no_args_is_help=True,
)


@preset_app.command("create")
def preset_create(
    name: Annotated[str, typer.Option(help="the preset's name")],
    prompt: Annotated[str, typer.Option(help="the prompt of every example")],
    examples_per_reference: Annotated[
        int, typer.Option(min=1, max=8, help="images per picked reference")
    ] = 1,
    model: ModelOption = None,
    aspect_ratio: AspectRatioOption = None,
    image_size: ImageSizeOption = None,
    seed: Annotated[int | None, typer.Option(help="seed of every job's first image")] = None,
    negative_prompt: NegativePromptOption = None,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Create a preset; prints its id."""
    config = _config(
        model=model,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        seed=seed,
        negative_prompt=negative_prompt,
    )
    body = {
        "name": name,
        "prompt": prompt,
        "config": config,
        "examples_per_reference": examples_per_reference,
    }
    with _session(api, as_json) as run:
        created = run.client.create_preset(body)
    if as_json:
        _print_json(created.model_dump(mode="json"))
    else:
        typer.echo(f"created preset {created.name!r} ({created.id}): {json.dumps(created.config)}")


@preset_app.command("examples")
def preset_examples(
    preset_id: Annotated[str, typer.Argument(metavar="PRESET_ID")],
    pool: Annotated[str, typer.Option(help="the pool: a group's name or id")],
    count: Annotated[int, typer.Option(min=1, max=1000, help="references to pick")] = 20,
    balance_by: Annotated[
        str | None, typer.Option(help="an attribute to balance over, e.g. gender")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="picks the same references again")] = None,
    group: Annotated[
        str | None,
        typer.Option(help="where the examples go (name or id; default: the pool's group)"),
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow the job until it ends")] = False,
    confirm_above: ConfirmAbove = None,
    yes: Yes = False,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Pick COUNT unused references of the pool (balanced over --balance-by) and submit one
    job of the preset's examples. With --watch, exit 0 only if every image succeeded.

    \b
    pixelfleet preset examples pre_... --pool models --count 20 --balance-by gender --watch
    """
    with _session(api, as_json) as run:
        pool_group = _existing_group(run, pool)
        body = {
            "pool_group_id": pool_group.id,
            "count": count,
            "balance_by": balance_by,
            "seed": seed,
            "group_id": _group(run, group).id if group else None,
        }
        request = _config(**body)
        estimate = run.client.estimate({"mode": "preset", "preset_id": preset_id, **request})
        CostGate(run, confirm_above, yes).check(estimate)
        answer = run.client.preset_examples(preset_id, request)
        [job] = answer.jobs
        if not watch:
            _say_examples(run, answer)
            return
        _note(run, _examples_line(answer))
        _report(run, Outcome(jobs=_watch(run, [job.id])))


def _examples_line(answer: PresetExamplesResponse) -> str:
    [job] = answer.jobs
    split = answer.split and ", ".join(f"{value} {n}" for value, n in answer.split.items())
    return (
        f"job {job.id}: {len(answer.reference_ids)} reference(s)"
        + (f" ({split})" if split else "")
        + f", {job.progress.total} image(s)"
    )


def _say_examples(run: Run, answer: PresetExamplesResponse) -> None:
    if run.as_json:
        _print_json(answer.model_dump(mode="json"))
        return
    [job] = answer.jobs
    typer.echo(_examples_line(answer))
    typer.echo(f"watch it with: pixelfleet jobs watch {job.id}", err=True)


@preset_app.command("show")
def preset_show(
    preset_id: Annotated[str, typer.Argument(metavar="PRESET_ID")],
    page: Annotated[int, typer.Option(min=1, help="page of the gallery")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=200, help="examples per page")] = 20,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """A preset: its settings, usage and a page of its gallery (newest first)."""
    with _session(api, as_json) as run:
        preset = run.client.preset(preset_id, page=page, limit=limit)
    if as_json:
        _print_json(preset.model_dump(mode="json"))
        return
    for line in _preset_lines(preset):
        typer.echo(line)


def _preset_lines(preset: PresetDetail) -> list[str]:
    gallery = preset.gallery
    lines = [
        f"preset {preset.id}: {preset.name!r}, {preset.examples_per_reference} example(s) "
        "per reference",
        f"prompt: {preset.prompt}",
        f"config: {json.dumps(preset.config)}",
        f"references: {preset.usage.used} used, {preset.usage.reserved} reserved by running jobs",
        f"gallery: {gallery.total} example(s); page {gallery.page}, newest first:",
    ]
    lines += [
        f"  {example.output_id}  from {example.upload_id}  {example.url}"
        for example in gallery.data
    ]
    return lines


@preset_app.command("reset")
def preset_reset(
    preset_id: Annotated[str, typer.Argument(metavar="PRESET_ID")],
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Let the preset pick every reference again (those of jobs still running stay reserved
    until they end)."""
    with _session(api, as_json) as run:
        reset = run.client.reset_preset_usage(preset_id)
    if as_json:
        _print_json(reset.model_dump(mode="json"))
    else:
        typer.echo(
            f"released {reset.released} reference(s); {reset.kept_reserved} still reserved "
            "by running jobs"
        )


# character --------------------------------------------------------------------------------
character_app = typer.Typer(
    help="Characters (references, a locked seed, a style) and their packs of images.",
    no_args_is_help=True,
)


@character_app.command("create")
def character_create(
    name: Annotated[str, typer.Option(help="the character's name (it is in every prompt)")],
    ref: Annotated[
        list[str],
        typer.Option("--ref", help="a reference: an upload or image id (repeat for more)"),
    ],
    seed: Annotated[
        int | None, typer.Option(help="the locked seed (random when not given)")
    ] = None,
    style_prompt: Annotated[
        str | None, typer.Option(help="the look, e.g. 'film photo, muted colours'")
    ] = None,
    aspect_ratio: AspectRatioOption = None,
    image_size: ImageSizeOption = None,
    model: ModelOption = None,
    negative_prompt: NegativePromptOption = None,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Create a character from reference images (uploads or generated images).

    \b
    pixelfleet character create --name Mina --ref img_... --ref img_... --seed 42
    """
    style = _config(
        model=model,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        style_prompt=style_prompt,
        negative_prompt=negative_prompt,
    )
    body = _config(name=name, references=ref, seed=seed, style=style)
    with _session(api, as_json) as run:
        created = run.client.create_character(body)
    if as_json:
        _print_json(created.model_dump(mode="json"))
        return
    typer.echo(
        f"character {created.id} ({created.name!r}): {len(created.references)} reference(s), "
        f"seed {created.seed}, style {json.dumps(created.style)}"
    )
    typer.echo(f"make a pack with: pixelfleet character pack {created.id}", err=True)


@character_app.command("pack")
def character_pack(
    character_id: Annotated[str, typer.Argument(help="the character's id (chr_...)")],
    size: Annotated[int, typer.Option(help="images in the pack (5-10)")] = 8,
    scene: Annotated[
        list[str] | None,
        typer.Option(
            help="a scene (repeat; fewer than --size are used in turn); "
            "default: built-in poses and settings"
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(help="group (name or id) for the images; default: the first reference's"),
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow the pack until it ends")] = False,
    out: Annotated[
        Path | None, typer.Option(help="save the pack's ZIP here once it ends (implies --watch)")
    ] = None,
    confirm_above: ConfirmAbove = None,
    yes: Yes = False,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Make a pack: SIZE images of the character, one scene each, its references and seed
    on every one. With --watch, exit 0 if every image succeeded, 1 if some did not.

    \b
    pixelfleet character pack chr_... --size 8 --watch
    pixelfleet character pack chr_... --scene "on a boat" --scene "in a library" --out mina.zip
    """
    with _session(api, as_json) as run:
        group_id = _existing_group(run, group).id if group else None
        body = _config(size=size, scenes=scene, group_id=group_id)
        estimate = run.client.estimate(
            {"mode": "character-pack", "character_id": character_id, **body}
        )
        CostGate(run, confirm_above, yes).check(estimate)
        [job] = run.client.create_pack(character_id, body).jobs
        if not (watch or out):
            _say_queued(run, job.id, job.progress.total)
            return
        _note(run, f"pack {job.id}: {job.progress.total} image(s) queued")
        jobs = _watch(run, [job.id])
        outcome = Outcome(jobs=jobs)
        if out is not None:
            with run.display.downloading(f"downloading {out.name}") as bar:
                size_saved = run.client.download_zip(
                    job.group_id, out, job_ids=[job.id], on_progress=bar.chunk
                )
            outcome = Outcome(jobs=jobs, zip_path=str(out), zip_bytes=size_saved)
        _report_pack(run, outcome)


def _say_queued(run: Run, job_id: str, total: int) -> None:
    if run.as_json:
        _print_json({"pack": {"id": job_id, "total": total}})
        return
    typer.echo(f"pack {job_id}: {total} image(s) queued")
    typer.echo(f"watch it with: pixelfleet jobs watch {job_id}", err=True)


def _report_pack(run: Run, outcome: Outcome) -> None:
    """The outcome, ending with `7 of 8 images succeeded`; exit 1 unless all did."""
    [job] = outcome.jobs
    summary = _pack_summary(job.progress)
    if run.as_json:
        _print_json({**outcome.as_json(), "summary": summary})
    else:
        for line in [*outcome.lines(), summary]:
            typer.echo(line)
    raise typer.Exit(outcome.exit_code)


def _pack_summary(progress: Progress) -> str:
    return f"{progress.succeeded} of {progress.total} images succeeded"


@character_app.command("show")
def character_show(
    character_id: Annotated[str, typer.Argument(help="the character's id (chr_...)")],
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """A character: its references, seed, style and packs (newest first, with progress)."""
    with _session(api, as_json) as run:
        character = run.client.character(character_id)
    if as_json:
        _print_json(character.model_dump(mode="json"))
        return
    typer.echo(f"character {character.id} ({character.name!r}), seed {character.seed}")
    typer.echo(f"references: {' '.join(character.references)}")
    typer.echo(f"style: {json.dumps(character.style)}")
    for pack in character.packs:
        typer.echo(f"{pack.id}  {pack.status:<10} {pack.summary}  {pack.created_at:%Y-%m-%d %H:%M}")
    typer.echo(f"{len(character.packs)} pack(s)", err=True)


# variations and reruns --------------------------------------------------------------------
def vary(
    output_id: Annotated[str, typer.Argument(metavar="OUTPUT_ID", help="a succeeded image")],
    count: Annotated[int, typer.Option(min=1, max=16, help="images in the new set")] = 4,
    prompt: Annotated[str | None, typer.Option(help="instead of the image's prompt")] = None,
    strength: Annotated[
        Strength, typer.Option(help="how far the new images may stray from it")
    ] = Strength.strong,
    watch: Annotated[bool, typer.Option(help="follow the new set until it ends")] = False,
    out: Annotated[
        Path | None, typer.Option(help="save the new images as a ZIP here (implies --watch)")
    ] = None,
    confirm_above: ConfirmAbove = None,
    yes: Yes = False,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """A variation set of a generated image (Midjourney's V1-V4): COUNT new images made from
    it, with its prompt and settings and new seeds. With --watch (or --out), exit 0 only if
    every image succeeded.

    \b
    pixelfleet vary out_... --count 4 --strength subtle --out variations.zip
    """
    with _session(api, as_json) as run:
        fields = _config(count=count, prompt=prompt, strength=strength.value)
        estimate = run.client.estimate({"mode": "variation", "output_id": output_id, **fields})
        CostGate(run, confirm_above, yes).check(estimate)
        answer = run.client.vary(output_id, count=count, prompt=prompt, strength=strength.value)
        [job] = answer.jobs
        _new_job(run, job, f"variation set {job.id} of {output_id}", watch or out is not None, out)


def rerun(
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    watch: Annotated[bool, typer.Option(help="follow the new job until it ends")] = False,
    confirm_above: ConfirmAbove = None,
    yes: Yes = False,
    api: ApiUrl = DEFAULT_API_URL,
    as_json: AsJson = False,
) -> None:
    """Make a job again (Midjourney's reroll): the same prompts, references and settings,
    with new seeds. With --watch, exit 0 only if every image succeeded."""
    with _session(api, as_json) as run:
        estimate = run.client.estimate({"mode": "rerun", "job_id": job_id})
        CostGate(run, confirm_above, yes).check(estimate)
        job = run.client.rerun(job_id)
        _new_job(run, job, f"rerun {job.id} of {job_id}", watch, None)


def _new_job(run: Run, job: JobPublic, what: str, watch: bool, out: Path | None) -> None:
    """Say what was created; with `watch`, follow it, save its ZIP to `out` and report."""
    line = f"{what}: {job.progress.total} image(s)"
    if not watch:
        if run.as_json:
            _print_json(job.model_dump(mode="json"))
        else:
            typer.echo(line)
            typer.echo(f"watch it with: pixelfleet jobs watch {job.id}", err=True)
        return
    _note(run, line)
    jobs = _watch(run, [job.id])
    if out is None:
        _report(run, Outcome(jobs=jobs))
        return
    with run.display.downloading(f"downloading {out.name}") as bar:
        size = run.client.download_zip(job.group_id, out, job_ids=[job.id], on_progress=bar.chunk)
    _report(run, Outcome(jobs=jobs, zip_path=str(out), zip_bytes=size))
