"""NGSI-LD ``@context`` resolution for the HTTP ingest, offline.

An NGSI-LD entity's attribute names and type are JSON-LD terms: ``intensity`` in one
sender's payload may be ``flow`` in another's (with a custom ``@context``) or the full
IRI ``https://smartdatamodels.org/dataModel.Transportation/intensity``. The mapping file
speaks in Smart Data Model terms, so every name is expanded to its IRI through the
entity's context and turned back into the term the shipped contexts give that IRI.

This is the term -> IRI part of JSON-LD expansion only (terms, compact IRIs
``prefix:suffix``, ``{"@id": ...}`` definitions, ``@vocab``), which is all NGSI-LD
attribute names need; a full processor (pyld) would also need every remote context,
and we never fetch one in the request path. Context URLs resolve only to the files in
``connectors/sources/contexts`` (see its README); any other URL is refused with
``unknown_context``. The NGSI-LD core context always applies, last, as the
specification requires.
"""

from __future__ import annotations

import json
from collections import ChainMap
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from connectors.sources.ingest_common import IngestError, short_repr

UNKNOWN_CONTEXT = "unknown_context"
CONTEXTS = Path(__file__).resolve().parent / "contexts"
CORE = "ngsi-ld-core.jsonld"
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
_SDM = "https://raw.githubusercontent.com/smart-data-models/{0}/master/context.jsonld"
_SDM_PAGES = "https://smart-data-models.github.io/{0}/context.jsonld"
SHIPPED: dict[str, str] = {
    **{
        f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context{v}.jsonld": CORE
        for v in ("", "-v1.3", "-v1.4", "-v1.5", "-v1.6", "-v1.7", "-v1.8")
    },
    **{
        url.format(model): f"sdm-{name}.jsonld"
        for model, name in (
            ("dataModel.Environment", "environment"),
            ("dataModel.Transportation", "transportation"),
            ("dataModel.Parking", "parking"),
        )
        for url in (_SDM, _SDM_PAGES)
    },
    "https://schema.lab.fiware.org/ld/context": "fiware-legacy.jsonld",
    "https://schema.lab.fiware.org/ld/context.jsonld": "fiware-legacy.jsonld",
}

Terms = dict[str, str]  # term -> absolute IRI ("@vocab" -> the vocabulary IRI)


@cache
def _file_terms(name: str) -> Terms:
    document = json.loads((CONTEXTS / name).read_text(encoding="utf-8"))
    return _definitions(document["@context"], {})


def _definitions(context: dict[str, Any], outer: Terms) -> Terms:
    """A context object's terms as absolute IRIs (compact IRIs through its prefixes)."""
    raw: dict[str, str] = {}
    for term, definition in context.items():
        iri = definition.get("@id") if isinstance(definition, dict) else definition
        if isinstance(iri, str):
            raw[term] = iri
    scope = ChainMap(raw, outer)  # not a copy: a long context list stays linear
    return {term: _absolute(iri, scope) for term, iri in raw.items()}


def _absolute(iri: str, scope: Mapping[str, str]) -> str:
    if iri.startswith("@") or "://" in iri:
        return iri
    prefix, colon, suffix = iri.partition(":")
    if colon and prefix in scope and "://" in scope[prefix]:
        return scope[prefix] + suffix
    return iri


def active_terms(context: Any) -> Terms:
    """The terms in force for an entity with this ``@context`` (None: every shipped one)."""
    terms: Terms = {}
    if context is None:
        for name in sorted(set(SHIPPED.values()) - {CORE}):
            terms.update(_file_terms(name))
    else:
        for entry in context if isinstance(context, list) else [context]:
            if isinstance(entry, str):
                shipped = SHIPPED.get(entry)
                if shipped is None:
                    raise IngestError(
                        UNKNOWN_CONTEXT,
                        f"@context {short_repr(entry)} is not one of the contexts shipped with "
                        "citystream (remote contexts are never fetched); inline it",
                    )
                terms.update(_file_terms(shipped))
            elif isinstance(entry, dict):
                terms.update(_definitions(entry, terms))
            else:
                raise IngestError(
                    UNKNOWN_CONTEXT, f"@context entry {short_repr(entry)} is not usable"
                )
    return {**terms, **_file_terms(CORE)}  # the core context applies last


@cache
def _canonical() -> dict[str, str]:
    """IRI -> Smart Data Model term, over every shipped context."""
    out: dict[str, str] = {}
    for name in sorted(set(SHIPPED.values())):
        for term, iri in _file_terms(name).items():
            if not term.startswith("@") and not iri.startswith("@"):
                out.setdefault(iri, term)
    return out


def expand(name: str, terms: Terms) -> str:
    """A name's IRI: a term, a compact IRI, an absolute IRI, else ``@vocab`` + name."""
    if name in terms:
        return terms[name]
    if "://" in name:
        return name
    absolute = _absolute(name, terms)
    if absolute != name:
        return absolute
    return terms.get("@vocab", DEFAULT_VOCAB) + name


def term(iri: str) -> str:
    """The Smart Data Model term of an IRI; the default vocabulary's name; else the IRI."""
    known = _canonical().get(iri)
    if known is not None:
        return known
    if iri.startswith(DEFAULT_VOCAB):
        return iri.removeprefix(DEFAULT_VOCAB)
    return iri


class ContextCache:
    """The terms of each ``@context`` value of one request, resolved once.

    A notification's context applies to every entity in it; resolving it per entity
    would make a request cost entities x context size. Keyed by identity: the parsed
    body outlives the cache, which keeps each context it saw (so no id is reused).
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, Terms | IngestError]] = {}

    def terms(self, context: Any) -> Terms:
        seen = self._seen.get(id(context))
        if seen is None or seen[0] is not context:
            try:
                result: Terms | IngestError = active_terms(context)
            except IngestError as exc:
                result = exc
            seen = self._seen[id(context)] = (context, result)
        if isinstance(seen[1], IngestError):
            raise IngestError(seen[1].reason, str(seen[1]))
        return seen[1]


def canonical_names(
    entity: dict[str, Any], context: Any, contexts: ContextCache | None = None
) -> tuple[str, dict[str, Any]]:
    """(type, attributes by Smart Data Model term) of an entity under ``context``."""
    terms = contexts.terms(context) if contexts is not None else active_terms(context)
    etype = term(expand(str(entity.get("type")), terms))
    attrs = {
        term(expand(k, terms)): v for k, v in entity.items() if k not in ("id", "type", "@context")
    }
    return etype, attrs
