"""What a source needs to pseudonymise, encrypt and honour opt-outs, built from settings.

Entry points and a source's ``setup`` call these (they do I/O: a key file, the registry);
the pieces themselves take plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.privacy.optout import FollowedOptOuts, OptOuts
from core.privacy.pseudonym import Pseudonymiser, dev_keys, parse_keys
from core.privacy.subject_keys import SubjectKeyStore
from core.settings import Settings

SUBJECT_KEY_DIR = Path("privacy") / "subject-keys"


def pseudonymiser(settings: Settings) -> Pseudonymiser:
    """The configured keys, or the data directory's own random key when none is set."""
    secret = settings.privacy_pseudonym_keys
    if secret is not None and secret.get_secret_value().strip():
        return Pseudonymiser(parse_keys(secret.get_secret_value()))
    return Pseudonymiser(dev_keys(settings.data_dir))


def subject_key_store(settings: Settings) -> SubjectKeyStore:
    return SubjectKeyStore(settings.privacy_subject_key_dir or settings.data_dir / SUBJECT_KEY_DIR)


class OptOutView(Protocol):
    """The registry as read at start (:class:`OptOuts`) or followed (:class:`FollowedOptOuts`)."""

    def excludes(self, field: str, pseudonym: str, pseudonymiser: Pseudonymiser,
                 value: str) -> bool: ...  # fmt: skip

    def __len__(self) -> int: ...


@dataclass
class Edge:
    """A source's privacy tools: pseudonyms, subject keys and the opt-outs.

    The one place a source turns a declared identifier into its pseudonym and asks
    whether it opted out: the city-file sources (a 311 case id) and the MQTT and HTTP
    ingest (a device id, a plate, a reporter a city's mapping declares) share it.
    """

    pseudonyms: Pseudonymiser
    subject_keys: SubjectKeyStore
    optouts: OptOutView

    @classmethod
    def from_settings(cls, settings: Settings, follow: bool = False) -> Edge:
        """Keys, and the registry: as of now, or (``follow``, for a long-running source)
        followed in the background until :meth:`close`."""
        optouts = FollowedOptOuts.start(settings) if follow else OptOuts.read(settings)
        return cls(pseudonymiser(settings), subject_key_store(settings), optouts)

    def pseudonym(self, field: str, value: str) -> str:
        """``value`` of the declared identifier ``field`` under the active key."""
        return self.pseudonyms.pseudonym(field, value)

    def opted_out(self, field: str, value: str) -> bool:
        """Whether ``value`` of ``field`` has opted out (under any configured key)."""
        return self.optouts.excludes(field, self.pseudonym(field, value), self.pseudonyms, value)

    def close(self) -> None:
        """Stop following the registry (nothing to do when it was read once)."""
        if isinstance(self.optouts, FollowedOptOuts):
            self.optouts.close()
