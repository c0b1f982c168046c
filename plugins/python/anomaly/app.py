# Python port of the default stage `anomaly` (plugins/anomaly/src/lib.rs).
#
# Build (tests/scripts/build-python-stage.sh does this, and skips the work
# when the output is up to date):
#
#     pip install componentize-py==0.25.1     # into $PIPELINE_CACHE/venv
#     componentize-py -d wit -w stage componentize app \
#         -p plugins/python/anomaly -o plugins/anomaly_py.wasm
#
# run from the repository root. componentize-py generates the bindings for
# the world `stage` of wit/stage.wit (Python package `wit_world`) at build
# time, so nothing generated is checked in; to read them, run
# `componentize-py -d wit -w stage bindings /tmp/bindings`. The component
# embeds a CPython 3.14 interpreter: about 18 MB, about 6 s for wasmtime to
# compile, 12.4 MiB of linear memory before the first batch. It runs under
# the host's default 64 MiB memory cap with batches up to about 100 000
# seed-format events (the default batch is 1000).
#
# Try it without a broker:
#
#     pipeline-host plugin check plugins/anomaly_py.wasm
#     pipeline-host plugin run plugins/anomaly_py.wasm < events.jsonl
#
# Its outcomes are byte-identical to those of plugins/anomaly.wasm on the
# same events and settings, refusals included.
"""Default stage `anomaly`, in Python: flags events from suspicious locales.

Appends ``"anomaly": true|false`` to every event, and
``"anomaly_reasons": [...]`` when flagged. Reasons:

- ``suspicious locale XX``: ``locale`` (compared case-insensitively) is in
  ``suspicious_locales``;
- ``missing locale``: the event has no string ``locale`` member at the top
  level and ``flag_missing_locale`` is ``true`` (the default).

Settings:

- ``suspicious_locales``: comma-separated locale codes (default
  ``RU,CN,KP,IR,NG,BY``, an example list: set your own).
- ``flag_missing_locale``: ``true`` (default) or ``false``.
- ``route``: a route name (contract 0.2.0); when set, flagged events go to
  that route instead of the default output (unset by default).

The fragments and refusal messages are the bytes the Rust stage and its SDK
(``plugins/sdk``) produce, so either build can replace the other.
"""

import json
from typing import Dict, Iterable, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Batch, ConfigEntry, Outcomes, Verdict

#: The default suspicious locales.
DEFAULT_SUSPICIOUS = "RU,CN,KP,IR,NG,BY"

#: The settings this stage accepts, in the order refusals list them.
KNOWN_SETTINGS = ("suspicious_locales", "flag_missing_locale", "route")

# Characters Rust's `str::trim` removes (Unicode White_Space). Python's
# `str.strip()` also removes U+001C..U+001F, which Rust keeps.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# JSON string escapes as the Rust SDK writes them (`json::write_str`): quote,
# backslash, \n, \r and \t by name, other control characters as \u00XX, and
# everything else (non-ASCII included) as raw UTF-8. `json.dumps` differs
# (\b, \f, and \uXXXX for non-ASCII by default), hence this table.
_ESCAPES = {c: "\\u%04x" % c for c in range(0x20)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})

# Integers are read as floats: this stage never reads numbers, and `int`
# refuses a literal over 4300 digits (valid JSON the host lets through), which
# would fail the whole batch; `float` turns it into `inf`. Numbers must stay
# numbers: a numeric `locale` is not a string, so it counts as missing.
_decode = json.JSONDecoder(parse_int=float).decode


def json_string(text: str) -> str:
    """Quotes ``text`` as a JSON string the way the Rust SDK does."""
    return '"' + text.translate(_ESCAPES) + '"'


def setting_list(value: str) -> List[str]:
    """Splits a comma-separated setting: items trimmed, empty items skipped
    (``Config::list`` of the Rust SDK)."""
    items = (item.strip(_RUST_WHITESPACE) for item in value.split(","))
    return [item for item in items if item]


class Anomaly:
    """The flagger: upper-cased suspicious locales and what to do when the
    locale is missing, plus a cache of the fragment for each locale seen."""

    def __init__(
        self, suspicious: Iterable[str], flag_missing: bool, route: Optional[str] = None
    ) -> None:
        self.suspicious = frozenset(suspicious)
        self.flag_missing = flag_missing
        # The one route this stage declares (index 0), when set.
        self.routes: List[str] = [] if route is None else [route]
        self._not_flagged = b'{"anomaly":false}'
        self._missing = (
            self._flagged("missing locale") if flag_missing else self._not_flagged
        )
        # Fragment per locale string; the distinct locales of a stream are
        # few, so this stays small and saves upper-casing and formatting.
        self._by_locale: Dict[str, bytes] = {}

    @classmethod
    def from_config(cls, entries: Iterable[Tuple[str, str]]) -> "Anomaly":
        """Builds the stage from its settings (a later duplicate key wins).

        Raises ``ValueError`` with the Rust stage's message when a setting
        is unknown or its value is refused.
        """
        config = dict(entries)
        unknown = sorted(k for k in config if k not in KNOWN_SETTINGS)
        if unknown:
            raise ValueError(
                "unknown setting(s) %s; this stage accepts: %s"
                % (", ".join(unknown), ", ".join(KNOWN_SETTINGS))
            )
        raw = config.get("suspicious_locales")
        locales = setting_list(DEFAULT_SUSPICIOUS if raw is None else raw)
        if not locales:
            raise ValueError(
                "setting suspicious_locales: the list is empty; remove the stage instead"
            )
        flag = config.get("flag_missing_locale", "true")
        if flag not in ("true", "false"):
            raise ValueError(
                "setting flag_missing_locale: `%s` is not one of true, false" % flag
            )
        route = config.get("route")
        if route is not None and not route:
            raise ValueError("a route needs a name")
        return cls((locale.upper() for locale in locales), flag == "true", route)

    @staticmethod
    def _flagged(reason: str) -> bytes:
        """The fragment of a flagged event, as the Rust ``Fields`` builder
        writes it: no spaces, ``anomaly`` first."""
        fragment = '{"anomaly":true,"anomaly_reasons":[%s]}' % json_string(reason)
        return fragment.encode("utf-8")

    def fragment_for(self, locale: object) -> bytes:
        """The JSON object to append to an event whose top-level ``locale``
        member is ``locale`` (``None`` when absent)."""
        if not isinstance(locale, str):
            return self._missing
        fragment = self._by_locale.get(locale)
        if fragment is None:
            fragment = self._classify(locale)
            if len(self._by_locale) < 4096:
                self._by_locale[locale] = fragment
        return fragment

    def _classify(self, locale: str) -> bytes:
        """Decides a locale string not seen before."""
        try:
            locale.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (a `\ud800` escape) or bytes that were not
            # UTF-8: the Rust SDK cannot read such a string and treats the
            # locale as missing.
            return self._missing
        upper = locale.upper()
        if upper in self.suspicious:
            return self._flagged("suspicious locale " + upper)
        return self._not_flagged

    def process(self, batch: Batch) -> Outcomes:
        """Appends a fragment to every record of the columnar ``batch``."""
        values = batch.values
        data = bytearray()
        data_ends: List[int] = []
        # Route columns (0.2.0): one end per record once a record is routed.
        routing = bool(self.routes)
        routes: List[int] = []
        route_ends: List[int] = []
        start = 0
        for end in batch.value_ends:
            # `surrogateescape`: the host's JSON check lets invalid UTF-8
            # through inside strings; such a locale counts as missing.
            text = values[start:end].decode("utf-8", "surrogateescape")
            start = end
            event = _decode(text)
            fragment = self.fragment_for(event.get("locale"))
            data += fragment
            data_ends.append(len(data))
            if routing:
                if fragment is not self._not_flagged:
                    routes.append(0)
                route_ends.append(len(routes))
        if not routes:
            route_ends = []
        return Outcomes(
            verdicts=[Verdict.APPEND] * len(data_ends),
            data=bytes(data),
            data_ends=data_ends,
            replacements=[],
            side=[],
            route_ends=route_ends,
            routes=routes,
        )


# The instance `init` built; module level because componentize-py may make
# a new `Transform` object per call.
_stage: Optional[Anomaly] = None


class Transform(exports.Transform):
    """The `transform` export of the world `stage`."""

    def init(self, config: List[ConfigEntry]) -> None:
        """Builds the stage; raises ``Err(message)`` to refuse the settings."""
        global _stage
        try:
            _stage = Anomaly.from_config((e.key, e.value) for e in config)
        except ValueError as refusal:
            raise Err(str(refusal))

    def routes(self) -> List[str]:
        """The route names this stage declared in `init` (contract 0.2.0)."""
        return [] if _stage is None else list(_stage.routes)

    def process(self, batch: Batch) -> Outcomes:
        """Processes one batch: one `append` verdict per record."""
        if _stage is None:
            raise RuntimeError("process called before a successful init")
        return _stage.process(batch)
