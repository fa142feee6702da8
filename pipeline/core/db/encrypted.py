"""Patient columns encrypted by the application (PostgreSQL): the column types, the cipher
an engine carries, and the re-encryption of stored values (upgrade, key rotation).

Why only on PostgreSQL: an SQLite database is a SQLCipher file (``pipeline.core.store``),
every page encrypted and authenticated, indexes included; encrypting columns inside it again
would add nothing but cost the worklist's LIKE search and indexes. Community PostgreSQL has
no transparent encryption, and its data files, WAL, base backups and ``pg_dump`` output all
hold what we send. So on PostgreSQL the patient columns (``encrypted_columns()``: names,
MRNs, transcripts, draft texts and versions, addenda, sidecar metadata, original file names,
scheduling notes) are sealed before they leave the process, with a subkey of the data key.
The decision and its measured cost: docs/decisions.md, docs/operations.md.

A stored value is text (it fits a TEXT column, or a JSON column as a JSON string)::

    "dxc1:" | mode | base64( key id (8) | sealed )

- mode ``r`` (randomized, every column by default): AES-256-GCM with the HKDF-SHA256 subkey
  ``COLUMN_KEY_INFO`` of the data key; sealed = nonce (12, random) | ciphertext | tag; the
  header (prefix, mode, key id) is the associated data. The same text gives a different
  value each time: nothing can be compared in SQL.
- mode ``d`` (deterministic, only where SQL compares values: the MRN columns, the audit
  log's patient reference, the correction pairs that learning groups): AES-SIV (RFC 5297,
  ``cryptography``'s ``AESSIV``) with a 512-bit subkey (``SIV_KEY_INFO``, AES-256 strength);
  sealed = synthetic IV | ciphertext. The same text under the same key gives the same value,
  so ``mrn == :q`` and ``GROUP BY`` work on ciphertext; it reveals which rows share a value
  (two drafts of one patient), never the value.

The key id is the data key's id (``crypto.key_id``, as in file headers): a reader picks the
key of the ring that sealed a value, so a rotation can move values one by one. A value
without the prefix is plain (written before this version, or with ``encrypt_columns`` off):
it is read as it is, and ``reencrypt`` seals it in place. A value with the prefix that does
not authenticate raises ``DecryptionError`` (never returned as text).

The engine carries the cipher (``attach``: ``engine.dialect.dictation_columns``); the types
find it through the dialect they are given, so the same models serve SQLite (no cipher:
values pass through unchanged) and PostgreSQL. Equality on a deterministic column binds the
sealed value (and, only while writing is off, the plain one too: rows of both kinds
match); a query never sends a clear MRN to a server that stores encrypted ones.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.types import TypeDecorator

from pipeline.core import crypto
from pipeline.core.errors import ConfigError

__all__ = [
    "PREFIX",
    "COLUMN_KEY_INFO",
    "SIV_KEY_INFO",
    "EncryptedText",
    "EncryptedJSON",
    "ColumnCipher",
    "ColumnSpec",
    "ColumnCounts",
    "attach",
    "cipher_of",
    "sql_can_search",
    "encrypted_columns",
    "reencrypt",
    "count_values",
    "REENCRYPT_SETTING",
]

log = logging.getLogger(__name__)

#: marks a sealed value; anything else is a plain value written before (or with it off)
PREFIX = "dxc1:"
_RANDOM = "r"
_DETERMINISTIC = "d"
_KID = 8
_NONCE = 12
#: HKDF ``info`` of the AES-256-GCM column key (randomized values)
COLUMN_KEY_INFO = b"dictation-column-key-v1"
#: HKDF ``info`` of the 512-bit AES-SIV column key (deterministic values)
SIV_KEY_INFO = b"dictation-column-siv-key-v1"
#: PostgreSQL setting that lets a re-encryption rewrite a signed draft's (sealed) text: the
#: immutability trigger compares stored bytes (migration 0009_column_encryption)
REENCRYPT_SETTING = "dictation.reencrypt"


# --- the cipher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Keys:
    kid: bytes
    gcm: AESGCM
    siv: AESSIV


class ColumnCipher:
    """Seals and opens column values with subkeys of a data key ring.

    ``ring`` returns the key ring to use (for an engine: ``crypto.keyring(settings)``, cached
    by the key file's stat; for a rotation: the ring being rotated to). ``writes``: whether
    new values are sealed (``settings.encrypt_columns``); values already sealed are always
    opened. ``refresh()`` re-reads the ring (an engine calls it at every connection
    checkout, so a rotated key is picked up by the next transaction).
    """

    def __init__(self, ring: Callable[[], crypto.KeyRing], *, writes: bool = True) -> None:
        self._ring_source = ring
        self.writes = writes
        self._ring: crypto.KeyRing | None = None
        self._keys: dict[bytes, _Keys] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never key material
        return f"ColumnCipher(writes={self.writes})"

    def refresh(self) -> crypto.KeyRing:
        """Read the ring again (cheap: ``crypto.keyring`` caches by the key file's stat)."""
        ring = self._ring_source()
        self._ring = ring
        return ring

    @property
    def ring(self) -> crypto.KeyRing:
        return self._ring if self._ring is not None else self.refresh()

    @property
    def current_id(self) -> bytes:
        return self.ring.current_id

    def _keys_for(self, kid: bytes, key: bytes | None = None) -> _Keys:
        found = self._keys.get(kid)
        if found is not None:
            return found
        if key is None:
            key = self.ring.get(kid)
            if key is None:  # rotated since the last refresh?
                key = self.refresh().get(kid)
            if key is None:
                known = ", ".join(k.hex() for k in self.ring.ids)
                raise crypto.DecryptionError(
                    f"A database value was sealed with key id {kid.hex()}, which is not in "
                    f"the key ring ({known}): wrong or missing data key."
                )
        keys = _Keys(kid,
                     AESGCM(crypto.derive_subkey(key, COLUMN_KEY_INFO)),
                     AESSIV(crypto.derive_subkey(key, SIV_KEY_INFO, length=64)))
        with self._lock:
            self._keys[kid] = keys
        return keys

    def seal(self, text: str, *, deterministic: bool = False) -> str:
        """``text`` sealed with the ring's current key (see the module docstring)."""
        ring = self.ring
        keys = self._keys_for(ring.current_id, ring.current)
        data = text.encode("utf-8", "surrogatepass")
        if deterministic:
            header = PREFIX + _DETERMINISTIC
            sealed = keys.siv.encrypt(data, [header.encode() + keys.kid])
        else:
            header = PREFIX + _RANDOM
            nonce = secrets.token_bytes(_NONCE)
            sealed = nonce + keys.gcm.encrypt(nonce, data, header.encode() + keys.kid)
        return header + base64.b64encode(keys.kid + sealed).decode("ascii")

    def open(self, stored: str) -> str:
        """The plain text of a sealed value; ``DecryptionError`` if it does not authenticate
        or its key is not in the ring."""
        mode, kid, sealed = _parse(stored)
        keys = self._keys_for(kid)
        aad = (PREFIX + mode).encode() + kid
        try:
            if mode == _DETERMINISTIC:
                data = keys.siv.decrypt(sealed, [aad])
            else:
                data = keys.gcm.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
        except InvalidTag:
            raise crypto.DecryptionError(
                f"A database value sealed with key id {kid.hex()} failed authentication: it "
                f"was changed after it was written."
            ) from None
        return data.decode("utf-8", "surrogatepass")


def _parse(stored: str) -> tuple[str, bytes, bytes]:
    mode = stored[len(PREFIX):len(PREFIX) + 1]
    try:
        raw = base64.b64decode(stored[len(PREFIX) + 1:], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if mode not in (_RANDOM, _DETERMINISTIC) or len(raw) <= _KID + (
            _NONCE if mode == _RANDOM else 0) + 15:
        raise crypto.DecryptionError("A database value has the sealed-value prefix but is "
                                     "not a sealed value (cut or changed).")
    return mode, raw[:_KID], raw[_KID:]


def is_sealed(value: object) -> bool:
    """True for a (str) value that carries the sealed-value prefix."""
    return isinstance(value, str) and value.startswith(PREFIX)


def sealed_key_id(value: str) -> tuple[str, bytes] | None:
    """(mode, key id) of a sealed value, None for a plain one (cheap: no decryption)."""
    if not value.startswith(PREFIX):
        return None
    head = value[len(PREFIX) + 1:len(PREFIX) + 1 + 12]  # 12 base64 chars = 9 bytes
    try:
        raw = base64.b64decode(head, validate=True)
    except (binascii.Error, ValueError):
        return None
    return value[len(PREFIX):len(PREFIX) + 1], raw[:_KID]


# --- the engine's cipher ----------------------------------------------------------------------

_ATTR = "dictation_columns"


def attach(engine: Engine, ring: Callable[[], crypto.KeyRing], *, writes: bool) -> ColumnCipher:
    """Give ``engine`` a column cipher (PostgreSQL engines; see the module docstring). When it
    writes, the ring is re-read at every connection checkout (a rotation is picked up by the
    next transaction); when it only reads, the ring is read the first time a sealed value
    is met (no key file is created for a database that holds none)."""
    cipher = ColumnCipher(ring, writes=writes)
    setattr(engine.dialect, _ATTR, cipher)
    if writes:
        sa.event.listen(engine, "checkout", lambda *_args: cipher.refresh())
    return cipher


def cipher_of(bind: Dialect | Engine | Connection | Any) -> ColumnCipher | None:
    """The column cipher of a dialect, engine, connection or session (None: values pass
    through unchanged, as on SQLite)."""
    if hasattr(bind, "get_bind"):  # a Session
        bind = bind.get_bind()
    dialect = getattr(bind, "dialect", bind)
    return getattr(dialect, _ATTR, None)


def sql_can_search(session: Any) -> bool:
    """False when the session's database may hold sealed values: a substring search (LIKE)
    must then run in Python over the opened values (the worklist's name search)."""
    return cipher_of(session) is None


# --- the types --------------------------------------------------------------------------------


class _EqualityProbe(TypeDecorator[str]):
    """The bound side of ``deterministic column == value``: ``sealed`` binds the value
    sealed deterministically whenever a key is at hand; ``plain`` binds it plain only while
    the engine does not write sealed values (legacy or unencrypted rows), else sealed too."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.plain = plain

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        cipher = cipher_of(dialect)
        if value is None or cipher is None or (self.plain and not cipher.writes):
            return value
        try:
            return cipher.seal(str(value), deterministic=True)
        except ConfigError:
            if cipher.writes:
                raise
            return value  # writing is off and there is no key: nothing can be sealed


class _DeterministicComparator(TypeDecorator.Comparator[str]):
    __slots__ = ()

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        if other is None or isinstance(other, sa.ColumnElement):
            return super().__eq__(other)
        expr = sa.type_coerce(self.expr, sa.Text())
        return sa.or_(expr == sa.bindparam(None, other, type_=_EqualityProbe(plain=False)),
                      expr == sa.bindparam(None, other, type_=_EqualityProbe(plain=True)))

    __hash__ = TypeDecorator.Comparator.__hash__


class EncryptedText(TypeDecorator[str]):
    """A text column holding patient data: sealed on PostgreSQL (``deterministic`` where SQL
    compares it), passed through unchanged on SQLite (a SQLCipher file). Plain values
    written before are read as they are. On PostgreSQL a randomized column cannot be
    compared, sorted or searched in SQL (``==`` never matches, ``LIKE`` sees ciphertext):
    such a filter runs in Python over the opened values (``sql_can_search``)."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, *, deterministic: bool = False) -> None:
        super().__init__()
        self.deterministic = deterministic

    @property
    def comparator_factory(self) -> Any:  # type: ignore[override]
        if self.deterministic:
            return _DeterministicComparator
        return super().comparator_factory

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        cipher = cipher_of(dialect)
        if value is None or cipher is None or not cipher.writes:
            return value
        return cipher.seal(str(value), deterministic=self.deterministic)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if not is_sealed(value):
            return value
        cipher = cipher_of(dialect)
        if cipher is None:
            raise crypto.DecryptionError("A sealed database value was read through an engine "
                                         "without a column cipher.")
        return cipher.open(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON column holding patient data: on PostgreSQL the JSON text is sealed and stored
    as a JSON string (the column keeps its JSON type: no type change, plain JSON written
    before reads as it did); on SQLite it is plain JSON inside the SQLCipher file."""

    impl = sa.JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        cipher = cipher_of(dialect)
        if value is None or value is sa.JSON.NULL or cipher is None or not cipher.writes:
            return value
        return cipher.seal(json.dumps(value, separators=(",", ":"), ensure_ascii=False))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if not is_sealed(value):
            return value
        cipher = cipher_of(dialect)
        if cipher is None:
            raise crypto.DecryptionError("A sealed database value was read through an engine "
                                         "without a column cipher.")
        return json.loads(cipher.open(value))


# --- inventory and re-encryption --------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """One encrypted column: table, column, primary key column, JSON or text, mode."""

    table: str
    column: str
    pk: str = "id"
    json: bool = False
    deterministic: bool = False


def encrypted_columns(metadata: sa.MetaData | None = None) -> list[ColumnSpec]:
    """Every column of the models declared ``EncryptedText`` / ``EncryptedJSON`` (the
    inventory a rotation and ``dictation keys encrypt-columns`` walk)."""
    if metadata is None:
        import importlib
        import pkgutil

        import pipeline.core.db
        from pipeline.core.db.base import Base

        for mod in pkgutil.iter_modules(pipeline.core.db.__path__):
            importlib.import_module(f"pipeline.core.db.{mod.name}")
        metadata = Base.metadata
    specs = []
    for table in metadata.sorted_tables:
        pks = list(table.primary_key.columns)
        for col in table.columns:
            kind = col.type
            if isinstance(kind, (EncryptedText, EncryptedJSON)):
                if len(pks) != 1:
                    raise ValueError(f"{table.name}: encrypted columns need a one-column key")
                specs.append(ColumnSpec(table.name, col.name, pks[0].name,
                                        json=isinstance(kind, EncryptedJSON),
                                        deterministic=bool(getattr(kind, "deterministic",
                                                                   False))))
    return specs


@dataclass
class ColumnCounts:
    """What ``reencrypt`` did: values sealed now (``plain`` of them were plain before), values
    already on the current key; or what ``count_values`` found: plain values, sealed ones and
    sealed ones per key id."""

    sealed: int = 0
    current: int = 0
    plain: int = 0
    columns: int = 0
    by_key: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _raw_rows(conn: Connection, spec: ColumnSpec, batch: int) -> Iterator[list[Any]]:
    """Batches of (pk, raw stored value), in key order (keyset paging: bounded memory)."""
    tbl = sa.table(spec.table, sa.column(spec.pk), sa.column(spec.column,
                                                              sa.JSON if spec.json else sa.Text))
    pk, col = tbl.c[spec.pk], tbl.c[spec.column]
    last: Any = None
    while True:
        stmt = sa.select(pk, col).where(col.is_not(None)).order_by(pk).limit(batch)
        if last is not None:
            stmt = stmt.where(pk > last)
        rows = [list(r) for r in conn.execute(stmt)]
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _decode_plain(value: Any, spec: ColumnSpec) -> str:
    if spec.json:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def reencrypt(conn: Connection, cipher: ColumnCipher, specs: Iterable[ColumnSpec], *,
              only_plain: bool = False, skip_plain: bool = False, batch: int = 500
              ) -> ColumnCounts:
    """Seal every stored value of ``specs`` with the cipher's current key: plain values
    (an upgrade, or ``encrypt_columns`` turned on; not with ``skip_plain``), and, unless
    ``only_plain``, values on an older key of the ring (a rotation). Runs in the caller's
    transaction (all or nothing); on PostgreSQL it sets ``REENCRYPT_SETTING`` for that
    transaction so the signed-text trigger lets the sealed text of a signed draft change
    (its plain text does not)."""
    import time

    t0 = time.perf_counter()
    counts = ColumnCounts()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT set_config(:name, 'on', true)"),
                     {"name": REENCRYPT_SETTING})
    current = cipher.current_id
    for spec in specs:
        counts.columns += 1
        tbl = sa.table(spec.table, sa.column(spec.pk),
                       sa.column(spec.column, sa.JSON if spec.json else sa.Text))
        stmt = (sa.update(tbl).where(tbl.c[spec.pk] == sa.bindparam("_pk"))
                .values({spec.column: sa.bindparam("_value")}))
        mode = _DETERMINISTIC if spec.deterministic else _RANDOM
        for rows in _raw_rows(conn, spec, batch):
            updates = []
            for pk, raw in rows:
                if is_sealed(raw):
                    found = sealed_key_id(raw)
                    if found is not None and found[1] == current:
                        counts.current += 1
                        if found[0] == mode:
                            continue
                    elif only_plain:
                        continue  # on an older key: left for the rotation
                    plain = cipher.open(raw)
                elif skip_plain:
                    continue
                else:
                    plain = _decode_plain(raw, spec)
                    counts.plain += 1
                updates.append({"_pk": pk,
                                "_value": cipher.seal(plain, deterministic=spec.deterministic)})
            if updates:
                conn.execute(stmt, updates)
                counts.sealed += len(updates)
    counts.seconds = round(time.perf_counter() - t0, 3)
    log.info("column re-encryption: columns=%d sealed=%d already_current=%d seconds=%.3f",
             counts.columns, counts.sealed, counts.current, counts.seconds)
    return counts


def count_values(conn: Connection, specs: Iterable[ColumnSpec], batch: int = 2000
                 ) -> ColumnCounts:
    """How many stored values of ``specs`` are plain and how many are sealed per key id
    (reads only the first characters of each value)."""
    counts = ColumnCounts()
    for spec in specs:
        counts.columns += 1
        tbl = sa.table(spec.table, sa.column(spec.column))
        col = tbl.c[spec.column]
        head = sa.func.substr(sa.cast(col, sa.Text), 1, 24)
        if spec.json:  # a sealed JSON value is a JSON string: skip its opening quote
            head = sa.func.substr(sa.cast(col, sa.Text), 2, 24)
        for (value,) in conn.execute(sa.select(head).where(col.is_not(None))):
            found = sealed_key_id(str(value)) if value is not None else None
            if found is None:
                counts.plain += 1
            else:
                kid = found[1].hex()
                counts.by_key[kid] = counts.by_key.get(kid, 0) + 1
                counts.sealed += 1
    return counts
