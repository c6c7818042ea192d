"""What a source needs to pseudonymise, encrypt and honour opt-outs, built from settings.

Entry points and a source's ``setup`` call these (they do I/O: a key file, the registry);
the pieces themselves take plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.privacy.optout import OptOuts
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


@dataclass
class Edge:
    """A source's privacy tools: pseudonyms, subject keys and the opt-outs read at start."""

    pseudonyms: Pseudonymiser
    subject_keys: SubjectKeyStore
    optouts: OptOuts

    @classmethod
    def from_settings(cls, settings: Settings) -> Edge:
        return cls(pseudonymiser(settings), subject_key_store(settings), OptOuts.read(settings))
