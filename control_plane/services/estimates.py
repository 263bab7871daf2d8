"""`POST /api/jobs/estimate`: what any submission would cost, planned by its own service
and rolled back (`pricing.estimate`)."""

from sqlmodel import Session

from control_plane.access import Viewer
from control_plane.schemas import (
    Estimate,
    EstimateBody,
    PackEstimate,
    PersonasEstimate,
    PresetExamplesEstimate,
    RerunEstimate,
    VariationEstimate,
)
from control_plane.services import (
    characters,
    imports,
    personas,
    presets,
    pricing,
    reruns,
    submissions,
    variations,
)
from control_plane.settings import Settings


def estimate(session: Session, settings: Settings, body: EstimateBody, viewer: Viewer) -> Estimate:
    """The estimate of the submission `body` describes; the same errors as the viewer
    submitting it."""
    return pricing.estimate(session, lambda: _submit(session, settings, body, viewer))


def estimate_import(
    session: Session, settings: Settings, request: imports.ImportFile, viewer: Viewer
) -> Estimate:
    return pricing.estimate(
        session, lambda: imports.import_file(session, settings, request, viewer)
    )


def _submit(session: Session, settings: Settings, body: EstimateBody, viewer: Viewer) -> object:
    if isinstance(body, VariationEstimate):
        return variations.vary(session, settings, body.output_id, body, viewer)
    if isinstance(body, RerunEstimate):
        return reruns.rerun(session, settings, body.job_id, viewer)
    if isinstance(body, PresetExamplesEstimate):
        return presets.request_examples(session, settings, body.preset_id, body, viewer)
    if isinstance(body, PackEstimate):
        return characters.create_pack(session, settings, body.character_id, body, viewer)
    if isinstance(body, PersonasEstimate):
        return personas.create_personas(session, settings, body, viewer)
    return submissions.submit(session, settings, body, viewer)
