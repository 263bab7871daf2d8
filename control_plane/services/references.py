"""Reference images: the one place that knows what a reference is.

A reference is an upload (`img_…`) or a generated image that succeeded (`out_…` of kind
image): a variation set, a character or a persona's variations are made from outputs. Within
a submission references belong to its group (the group's uploads, or the images of its jobs);
callers that work across groups (characters) pass `group_id=None`.

Only the viewer's images are references: another user's upload or image is answered as one
that does not exist (an admin may use anyone's).

Ids are checked by shape before any query, so only well-formed ids, in bounded batches,
reach the database. What a reference points to is resolved once more when its dispatch is
sent (`storage_keys`): an image deleted meanwhile is then missing, and the sender fails the
images that needed it (`lifecycle.drop_unsendable`).
"""

from collections.abc import Iterable, Sequence

from sqlmodel import Session, col, select

from control_plane.access import Viewer
from control_plane.db import in_batches
from control_plane.errors import InvalidRequest
from control_plane.models import Job, Output, OutputKind, OutputStatus, Upload
from shared.ids import is_id
from shared.model_table import model_table

SHOWN = 10  # ids or problems a message names before "…"
SHAPES = (
    "not shaped like an upload id (img_ and 26 characters of lower-case Crockford base32) "
    "or an image id (out_ and the same)"
)


def check(
    session: Session,
    group_id: str | None,
    id_lists: Sequence[Sequence[str]],
    model: str | None,
    viewer: Viewer,
) -> None:
    """422 unless every prompt's references are within the model's limit and every id is a
    usable reference of `viewer` (of `group_id`, unless it is None); the message names the bad
    ids and why."""
    limit = model_table()[model or ""].max_reference_images
    longest = max((len(ids) for ids in id_lists), default=0)
    if longest > limit:
        raise InvalidRequest(
            f"{model} takes at most {limit} reference images per prompt; got {longest}"
        )
    wanted = {image_id for ids in id_lists for image_id in ids}
    malformed = sorted(image_id for image_id in wanted if not well_formed(image_id))
    if malformed:
        raise InvalidRequest(
            f"{len(malformed)} image id(s) are not uploads or images{_of(group_id)}: "
            f"{SHAPES}: {few(malformed)}"
        )
    found = problems(session, group_id, wanted, viewer)
    if found:
        reasons = [found[image_id] for image_id in sorted(found)]
        raise InvalidRequest(
            f"{len(found)} image id(s) cannot be used as references{_of(group_id)}: "
            + "; ".join(reasons[:SHOWN])
            + (" …" if len(reasons) > SHOWN else "")
        )


def well_formed(image_id: str) -> bool:
    """Whether `image_id` is shaped like an upload id or an output id."""
    return is_id("img", image_id) or is_id("out", image_id)


def problems(
    session: Session, group_id: str | None, ids: Iterable[str], viewer: Viewer
) -> dict[str, str]:
    """Each of `ids` that is not a usable reference of `viewer` (of `group_id` unless None),
    with a sentence naming it and saying why; usable ids are left out."""
    wanted = sorted(set(ids))
    uploads = _usable_uploads(session, group_id, [i for i in wanted if is_id("img", i)], viewer)
    outputs = _outputs(session, group_id, [i for i in wanted if is_id("out", i)], viewer)
    found = {}
    for image_id in wanted:
        if is_id("img", image_id):
            problem = None if image_id in uploads else f"no upload {image_id}{_in(group_id)}"
        elif is_id("out", image_id):
            problem = _output_problem(image_id, group_id, outputs.get(image_id))
        else:
            problem = f"{shown(image_id)} is {SHAPES}"
        if problem is not None:
            found[image_id] = problem
    return found


def storage_keys(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """The storage key of each of `ids` that is a usable reference now, in any group (ids
    that are not, such as images deleted meanwhile, are left out)."""
    wanted = sorted(set(ids))
    keys: dict[str, str] = {}
    for batch in in_batches([i for i in wanted if is_id("img", i)]):
        keys.update(
            session.exec(
                select(Upload.id, Upload.storage_key).where(col(Upload.id).in_(batch))
            ).all()
        )
    for batch in in_batches([i for i in wanted if is_id("out", i)]):
        for image_id, key in session.exec(
            select(Output.id, Output.storage_key).where(col(Output.id).in_(batch), *_USABLE)
        ).all():
            if key:
                keys[image_id] = key
    return keys


_USABLE = (col(Output.status) == OutputStatus.SUCCEEDED, col(Output.kind) == OutputKind.IMAGE)


def _usable_uploads(
    session: Session, group_id: str | None, ids: list[str], viewer: Viewer
) -> set[str]:
    found: set[str] = set()
    for batch in in_batches(ids):
        query = select(Upload.id).where(
            col(Upload.id).in_(batch), *viewer.owned(col(Upload.user_id))
        )
        if group_id is not None:
            query = query.where(Upload.group_id == group_id)
        found.update(session.exec(query).all())
    return found


def _outputs(
    session: Session, group_id: str | None, ids: list[str], viewer: Viewer
) -> dict[str, tuple[str, str, str | None]]:
    """Each output among `ids` (of the group, unless None) that `viewer` sees: its status,
    kind and key."""
    found: dict[str, tuple[str, str, str | None]] = {}
    for batch in in_batches(ids):
        query = select(Output.id, Output.status, Output.kind, Output.storage_key).where(
            col(Output.id).in_(batch)
        )
        if not viewer.is_admin:  # an image is its job's owner's
            query = query.join(Job, col(Job.id) == col(Output.job_id)).where(
                *viewer.owned(col(Job.user_id))
            )
        if group_id is not None:
            query = query.where(Output.group_id == group_id)
        for image_id, status, kind, key in session.exec(query).all():
            found[image_id] = (status, kind, key)
    return found


def _output_problem(
    image_id: str, group_id: str | None, row: tuple[str, str, str | None] | None
) -> str | None:
    if row is None:
        return f"no image {image_id}{_in(group_id)}"
    status, kind, key = row
    if kind != OutputKind.IMAGE:
        return f"{image_id} is a text answer, not an image"
    if status != OutputStatus.SUCCEEDED:
        return f"{image_id} has not succeeded (status {status})"
    if not key:
        return f"{image_id} has no file"
    return None


def few(image_ids: list[str], count: int = SHOWN) -> str:
    """The first few ids, each cut short: a message names them without echoing a body."""
    return ", ".join(shown(i) for i in image_ids[:count]) + (" …" if len(image_ids) > count else "")


def shown(image_id: str, chars: int = 40) -> str:
    return image_id if len(image_id) <= chars else image_id[:chars] + "…"


def _of(group_id: str | None) -> str:
    return f" of group {group_id}" if group_id is not None else ""


def _in(group_id: str | None) -> str:
    return f" in group {group_id}" if group_id is not None else ""
