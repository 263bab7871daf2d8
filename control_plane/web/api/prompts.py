from fastapi import APIRouter

from control_plane.schemas import PromptExpand, PromptExpansion
from control_plane.services import prompts

router = APIRouter(prefix="/api/prompts", tags=["prompts"])


@router.post("/expand")
def expand_prompt(body: PromptExpand) -> PromptExpansion:
    """Preview a prompt's permutations: `a {red, blue} bird` → two prompts, in order."""
    expanded = prompts.expand(body.prompt)
    return PromptExpansion(prompts=expanded, count=len(expanded))
