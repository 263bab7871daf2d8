"""Who is asking, and what they may see: every owned row (groups, uploads, jobs, catalogs,
presets, characters, personas) carries its maker's `user_id`; another user's rows do not exist
for a viewer (404), an admin sees everything.

Rows made by the implicit local user of the embedded default (no users yet, loopback only) or
by the admin password have no owner (`user_id` None): only admins see them once users exist.
"""

from dataclasses import dataclass
from typing import Any

from control_plane.models import User, UserTier


@dataclass(frozen=True)
class Viewer:
    """The one a request acts for."""

    user_id: str | None  # None: the implicit local user, or the admin password
    name: str
    tier: UserTier = UserTier.PAID
    is_admin: bool = True
    monthly_cap_usd: float | None = None

    @classmethod
    def of(cls, user: User) -> "Viewer":
        return cls(
            user_id=user.id,
            name=user.name,
            tier=UserTier(user.tier),
            is_admin=user.is_admin,
            monthly_cap_usd=user.monthly_cap_usd,
        )

    def sees(self, owner_id: str | None) -> bool:
        """Whether a row owned by `owner_id` exists for this viewer."""
        return self.is_admin or owner_id == self.user_id

    def owned(self, user_id_column: Any) -> list[Any]:
        """WHERE clauses keeping the rows this viewer sees (none for an admin)."""
        return [] if self.is_admin else [user_id_column == self.user_id]


LOCAL = Viewer(user_id=None, name="local")  # the embedded default's one implicit user
PASSWORD_ADMIN = Viewer(user_id=None, name="admin")  # PIXELFLEET_API_PASSWORD
