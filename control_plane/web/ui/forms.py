"""The group page's forms: the generate form read into the JSON API's submit body, its
estimate as the form changes, and what is wrong with it in the form's own words (the label
of the field, the name of the image), never an API field path.
"""

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session, col, select
from starlette.datastructures import FormData

from control_plane.access import Viewer
from control_plane.errors import DomainError, InvalidRequest, NotFound
from control_plane.models import Job, Upload
from control_plane.schemas import Estimate, SubmitRequest
from control_plane.services import estimates, groups, submissions, uploads
from control_plane.settings import Settings
from control_plane.web.deps import GroupId, PlatformDep, SessionDep, ViewerDep

router = APIRouter(include_in_schema=False)
submit_adapter: TypeAdapter[Any] = TypeAdapter(SubmitRequest)

CONFIG_FIELDS = ("model", "aspect_ratio", "image_size", "negative_prompt", "seed")
SEMI_FIELDS = ("total_images", "images_per_set")
TYPED_FIELDS = ("mode", "prompt", *CONFIG_FIELDS, *SEMI_FIELDS)
DEFAULT_IMAGES_PER_SET = 4
LABELS = {
    "prompt": "Prompt",
    "model": "Model",
    "aspect_ratio": "Aspect ratio",
    "image_size": "Image size",
    "negative_prompt": "Negative prompt",
    "seed": "Seed",
    "total_images": "Total images",
    "images_per_set": "Images per set",
    "outputs_per_image": "Outputs per image",
}
NAMES_LISTED = 5
NOT_SAID = ("body", "config", "automatic", "semi-automatic")  # in pydantic's paths: the body's


@dataclass
class GenerateForm:
    """The generate form as typed: kept to fill the form again when it is refused."""

    fields: dict[str, str] = field(default_factory=dict)  # mode, prompt, model, … as typed
    ticked: list[str] = field(default_factory=list)
    all_uploads: bool = False  # "all N uploads" ticked: every page's, not just this one's
    prompts: dict[str, str] = field(default_factory=dict)  # per image, the non-blank ones
    confirmed: bool = False

    @classmethod
    def read(cls, form: FormData) -> "GenerateForm":
        return cls(
            fields={key: str(form.get(key) or "") for key in TYPED_FIELDS},
            ticked=list(dict.fromkeys(str(value) for value in form.getlist("images"))),
            all_uploads=form.get("all_uploads") == "1",
            prompts={
                key.removeprefix("prompt_"): text
                for key, value in form.multi_items()
                if key.startswith("prompt_") and (text := str(value).strip())
            },
            confirmed=form.get("confirmed") == "1",
        )

    @property
    def mode(self) -> str:
        return self.fields.get("mode") or "automatic"

    def value(self, key: str) -> str:
        return self.fields.get(key, "").strip()


@dataclass
class Submission:
    """The submit body of a form, and the names of its items' images (in item order) to say
    which image a problem is about."""

    body: dict[str, Any]
    item_names: list[str]

    def validated(self) -> Any:
        """The body as the JSON API reads it; InvalidRequest in the form's words if not."""
        try:
            return submit_adapter.validate_python(self.body)
        except ValidationError as exc:
            raise InvalidRequest(plain_validation(exc.errors(), self.item_names)) from exc


def submission(session: Session, group_id: str, typed: GenerateForm) -> Submission:
    """The JSON API's submit body, from the group page's form.

    Automatic: the ticked images (all the group's when none is ticked, or "all" is), one
    prompt. Semi-automatic: each image ticked or given a prompt is an item and needs its
    prompt; total images left blank is one set per item.
    """
    config = {key: value for key in CONFIG_FIELDS if (value := typed.value(key))}
    every = uploads.upload_ids_of(session, group_id) if typed.all_uploads else []
    if typed.mode != "semi-automatic":
        images = every or typed.ticked or uploads.upload_ids_of(session, group_id)
        prompt = typed.fields.get("prompt")
        body = {"group_id": group_id, "mode": typed.mode, "prompt": prompt, "images": images}
        return Submission({**body, "config": config}, [])
    return _semi_automatic(session, group_id, typed, every or typed.ticked, config)


def _semi_automatic(
    session: Session, group_id: str, typed: GenerateForm, ticked: list[str], config: dict[str, Any]
) -> Submission:
    chosen = list(dict.fromkeys([*ticked, *typed.prompts]))
    names = filenames(session, group_id, chosen)
    missing = [image_id for image_id in chosen if image_id not in typed.prompts]
    if missing:
        raise InvalidRequest(_without_prompt([names.get(i, i) for i in missing]))
    config.update({key: value for key in SEMI_FIELDS if (value := typed.value(key))})
    if "total_images" not in config and chosen:
        per_set = _whole_number(config.get("images_per_set")) or DEFAULT_IMAGES_PER_SET
        config["total_images"] = str(per_set * len(chosen))
    items = [{"images": [image_id], "prompt": typed.prompts[image_id]} for image_id in chosen]
    body = {"group_id": group_id, "mode": typed.mode, "items": items, "config": config}
    return Submission(body, [names.get(image_id, image_id) for image_id in chosen])


def filenames(session: Session, group_id: str, upload_ids: list[str]) -> dict[str, str]:
    """The uploads' file names, by id (ids not of the group are left out)."""
    if not upload_ids:
        return {}
    rows = session.exec(
        select(Upload.id, Upload.filename).where(
            Upload.group_id == group_id, col(Upload.id).in_(upload_ids)
        )
    ).all()
    return dict(rows)


def _whole_number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and int(text) > 0 else None


def _without_prompt(names: list[str]) -> str:
    rule = "in semi-automatic mode each ticked image needs its own prompt"
    if len(names) == 1:
        return f"Image {_quoted(names[0])} has no prompt: {rule}"
    return f"Images {_listed(names)} have no prompt: {rule}"


def _quoted(name: str) -> str:
    return f"\u2018{name}\u2019"  # in typographic single quotes


def _listed(names: list[str]) -> str:
    shown = [_quoted(name) for name in names[:NAMES_LISTED]]
    if len(names) > NAMES_LISTED:
        return f"{', '.join(shown)} and {len(names) - NAMES_LISTED:,} more"
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def plain_validation(errors: Iterable[Mapping[str, Any]], item_names: list[str]) -> str:
    """Pydantic's errors on a submit body, in the form's words: one sentence each."""
    return " ".join(_plain_error(error, item_names) for error in errors)


def _plain_error(error: Mapping[str, Any], item_names: list[str]) -> str:
    location = [part for part in error.get("loc", ()) if part not in NOT_SAID]
    message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    kind = str(error.get("type", ""))
    if location[:1] == ["images"] and kind == "too_short":
        return "There are no images to generate from: upload some first."
    if location[:1] == ["items"] and len(location) == 1 and kind == "too_short":
        return "No image chosen: tick an image and give it a prompt."
    said = plain_message(message, item_names).rstrip(".")
    if not location:
        return f"{said[:1].upper()}{said[1:]}."
    subject = _subject(location, item_names)
    if kind in ("string_too_short", "missing") and location[-1:] == ["prompt"]:
        return f"{subject} is empty: write what to generate."
    return f"{subject}: {said}."


def _subject(location: list[Any], item_names: list[str]) -> str:
    if location[:1] == ["items"] and len(location) > 1 and isinstance(location[1], int):
        index = location[1]
        image = _quoted(item_names[index]) if index < len(item_names) else f"{index + 1}"
        what = "prompt" if location[-1] == "prompt" else "settings"
        return f"The {what} of image {image}"
    return LABELS.get(str(location[-1]), str(location[-1]).replace("_", " ").capitalize())


ITEM_PATH = re.compile(r"items\[(\d+)\]\.prompt")
API_WORDS = re.compile("|".join(map(re.escape, LABELS)))


def plain_message(message: str, item_names: list[str]) -> str:
    """A service's message with the API's names (`items[2].prompt`, `aspect_ratio`) said as
    the form says them (the prompt of image 'cat 3.png', aspect ratio)."""

    def item(found: re.Match[str]) -> str:
        index = int(found.group(1))
        name = item_names[index] if index < len(item_names) else str(index + 1)
        return f"the prompt of image {_quoted(name)}"

    said = ITEM_PATH.sub(item, message)
    return API_WORDS.sub(lambda found: LABELS[found.group(0)].lower(), said)


def needs_confirmation(estimate: Estimate, settings: Settings) -> bool:
    """Above PIXELFLEET_UI_CONFIRM_ABOVE_USD or …_IMAGES, Generate asks once more."""
    return (
        estimate.cost_usd > settings.ui_confirm_above_usd
        or estimate.images > settings.ui_confirm_above_images
    )


def spending(estimate: Estimate) -> str:
    """What a submission will make and cost, in a sentence's words."""
    images = f"{estimate.images:,} image{'s' if estimate.images != 1 else ''}"
    return f"{images} for about ${estimate.cost_usd:,.2f}"


def estimate_of(
    session: Session, settings: Settings, group_id: str, typed: GenerateForm, viewer: Viewer
) -> Estimate:
    """What the form would cost; InvalidRequest (or the service's error) in plain words."""
    planned = submission(session, group_id, typed)
    with in_form_words(planned.item_names):
        return estimates.estimate(session, settings, planned.validated(), viewer)


def submit_form(
    session: Session, settings: Settings, group_id: str, typed: GenerateForm, viewer: Viewer
) -> list[Job] | Estimate:
    """The form's jobs, submitted; or, when they cost more than the thresholds and the form
    was not confirmed, their estimate (nothing submitted). Errors in plain words."""
    planned = submission(session, group_id, typed)
    body = planned.validated()
    with in_form_words(planned.item_names):
        if not typed.confirmed:
            estimate = estimates.estimate(session, settings, body, viewer)
            if needs_confirmation(estimate, settings):
                return estimate
        return submissions.submit(session, settings, body, viewer)


@contextmanager
def in_form_words(item_names: list[str]) -> Iterator[None]:
    """A service's refusal (not a 404: that is a page of its own) said in the form's words."""
    try:
        yield
    except NotFound:
        raise
    except DomainError as exc:
        exc.message = plain_message(exc.message, item_names)
        raise


@router.post("/groups/{group_id}/estimate")
async def estimate_form(
    group_id: GroupId,
    request: Request,
    platform: PlatformDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> JSONResponse:
    """The group page's generate form as it stands: how many images, what they cost, and
    whether Generate asks to confirm; or what is wrong with it, in the form's words (as
    `problem`, answered 200: a form half filled in is not a failed request)."""
    typed = GenerateForm.read(await request.form())
    await run_in_threadpool(groups.get_group, session, group_id, viewer)
    unwritten = typed.mode == "automatic" and not typed.value("prompt")
    if unwritten:  # the cost does not wait for the prompt (braces aside)
        typed.fields["prompt"] = "a prompt yet to be written"
    try:
        found = await run_in_threadpool(
            estimate_of, session, platform.settings, group_id, typed, viewer
        )
    except NotFound:
        raise
    except DomainError as exc:
        return JSONResponse({"problem": exc.message})
    answer = {
        "images": found.images,
        "cost_usd": found.cost_usd,
        "summary": spending(found),
        "confirm": needs_confirmation(found, platform.settings),
    }
    if unwritten:
        answer["note"] = "write the prompt before you generate"
    return JSONResponse(answer)


ATTRIBUTE_PAIR = re.compile(r"\s*([^=:]+?)\s*[=:]\s*(.*?)\s*")
NUMBER = re.compile(r"-?\d+(\.\d+)?")


def typed_attributes(text: str) -> dict[str, Any] | None:
    """The upload form's attributes: `key=value` pairs separated by commas or lines (numbers
    and true/false typed as such), or a JSON object. InvalidRequest says what is wrong."""
    if not text.strip() or text.strip().startswith("{"):
        return uploads.parse_attributes(text)
    pairs: dict[str, Any] = {}
    for part in filter(str.strip, re.split(r"[,\n]", text)):
        found = ATTRIBUTE_PAIR.fullmatch(part)
        if found is None:
            raise InvalidRequest(
                f"Attributes: {part.strip()!r} is not a key=value pair; write them as "
                "gender=female, age=30"
            )
        pairs[found.group(1)] = _attribute_value(found.group(2))
    return uploads.parse_attributes(json.dumps(pairs))


def _attribute_value(text: str) -> str | int | float | bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if NUMBER.fullmatch(text):
        return float(text) if "." in text else int(text)
    return text
