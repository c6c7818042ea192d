"""A Faust codec for Confluent-framed Avro values.

Decoding never raises: a payload that cannot be decoded becomes :class:`Undecodable`, so
the agent can dead-letter it with the reason instead of Faust dropping it in a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.serializers.codecs import Codec

from schemas.serde import AvroSerde, SerdeError


@dataclass(frozen=True)
class Undecodable:
    payload: bytes
    reason: str
    detail: str


class AvroCodec(Codec):
    def __init__(self, serde: AvroSerde, **kwargs: Any) -> None:
        self.serde = serde
        super().__init__(**kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return self.serde.encode(obj)

    def _loads(self, s: bytes) -> Any:
        try:
            return self.serde.decode(s)
        except SerdeError as exc:
            return Undecodable(bytes(s) if s is not None else b"", exc.reason, str(exc))
