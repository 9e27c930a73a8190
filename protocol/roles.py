"""What each custom role and state may do on the server (the vendor leaves this to each app)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from .model import CustomRole, CustomState, ON_THE_MIC


class Permission(enum.IntFlag):
    NONE = 0
    PUBLISH = 1 << 0  # upload audio
    MANAGE = 1 << 1  # change other participants' roles and states
    KICK = 1 << 2
    STOP = 1 << 3
    RECORD = 1 << 4  # start and stop the server's recording of the channel
    CDN = 1 << 5  # start and stop streaming the channel's mix to Icecast and HLS

    @classmethod
    def host(cls) -> Permission:
        return cls.PUBLISH | cls.MANAGE | cls.KICK | cls.STOP | cls.RECORD | cls.CDN


def _default_roles() -> dict[CustomRole, Permission]:
    return {
        CustomRole.NONE: Permission.NONE,
        CustomRole.ROLE_0: Permission.host(),
        CustomRole.ROLE_1: Permission.NONE,
        CustomRole.ROLE_2: Permission.NONE,
        CustomRole.ROLE_3: Permission.NONE,
    }


@attrs.frozen
class RolePolicy:
    """Maps roles (and the on-the-mic state) to permissions.

    The default is the product's: custom_role_0 hosts, every other role listens, and anyone
    with custom_state_0 may publish.
    """

    roles: Mapping[CustomRole, Permission] = attrs.field(factory=_default_roles)
    publishing_state: CustomState = ON_THE_MIC

    def permissions(self, role: CustomRole, state: CustomState) -> Permission:
        granted = self.roles.get(role, Permission.NONE)
        if state is self.publishing_state and state is not CustomState.NONE:
            granted |= Permission.PUBLISH
        return granted

    def may_publish(self, role: CustomRole, state: CustomState) -> bool:
        return bool(self.permissions(role, state) & Permission.PUBLISH)

    def is_host(self, role: CustomRole) -> bool:
        """Hosts receive audience presence (decision 5): anyone who may manage others."""
        return bool(self.roles.get(role, Permission.NONE) & Permission.MANAGE)


DEFAULT_POLICY = RolePolicy()
