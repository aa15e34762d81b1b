"""Job records in Redis: state, progress, timestamps, params, result, error, artifacts, metrics.

One hash per job (``gmpi:job:{id}``; every field JSON-encoded) and a sorted set of all jobs by creation
time. State changes go through a Lua script, so a terminal state (succeeded, failed, cancelled) is never
overwritten by a late progress report; an idempotency key maps to the first job submitted with it.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from services.common.contracts import TERMINAL as TERMINAL  # re-exported: the job states' one definition
from services.common.contracts import JobState, JobType
from services.common.keys import OWNER_PREFIX, is_owner_id, new_id, normalize_owner

STATES: tuple[str, ...] = tuple(JobState)
JOB_TYPES: tuple[str, ...] = tuple(JobType)
IDEMPOTENCY_TTL_S = 24 * 3600
DEADLETTER_MAX = 1000  # entries kept on the dead-letter list (gmpi:deadletter), newest first
_LIST_BATCH = 500  # index entries per pipelined round trip when listing with filters
SINCE_START: Any = object()  # JobStore.progress: estimate the ETA from the job's rate since it started
_JSON_FIELDS = ("params", "progress", "result", "error", "artifacts", "metrics", "info")

# The Lua scripts spell out the terminal states of JobState (contracts.TERMINAL): succeeded, failed, cancelled
# KEYS[1] job hash; ARGV[1] new state, ARGV[2] now, ARGV[3] JSON of extra fields (already encoded values)
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return 'missing' end
cur = cjson.decode(cur)
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
local new = ARGV[1]
local extra = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], 'state', cjson.encode(new), 'updated_at', ARGV[2])
if new == 'running' and not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
end
if new == 'succeeded' or new == 'failed' or new == 'cancelled' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
end
for k, v in pairs(extra) do redis.call('HSET', KEYS[1], k, v) end
return 'ok'
"""

# KEYS[1] new job hash, KEYS[2] index, KEYS[3] idempotency key ('' for none); ARGV[1] index score,
# ARGV[2] idempotency TTL, ARGV[3] the claim stored under the idempotency key (JSON {job_id,
# request_sha256}), ARGV[4] the job-hash key prefix, ARGV[5] job id, ARGV[6…] field/value pairs.
# One script, so two submissions racing with one key never both create a job, and a key never points at a
# record that is not written yet. → 'created', or the claim of the job the key already names.
_CREATE = """
if KEYS[3] ~= '' then
  local cur = redis.call('GET', KEYS[3])
  if cur then
    local ok, claim = pcall(cjson.decode, cur)
    if not ok or type(claim) ~= 'table' then claim = {job_id = cur} end
    local first = claim['job_id']
    if type(first) == 'string' and redis.call('EXISTS', ARGV[4] .. first) == 1 then
      return cjson.encode(claim)
    end
  end
end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[5])
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2]) end
return 'created'
"""

# KEYS[1] job hash; ARGV: field/value pairs; only while the job is not terminal
_UPDATE_LIVE = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return 'missing' end
cur = cjson.decode(cur)
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 'ok'
"""


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return f"no job '{self.args[0]}'"


class IdempotencyConflict(ValueError):
    """An idempotency key reused with a different request than the one it was first used with."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(key, job_id)
        self.key, self.job_id = key, job_id

    def __str__(self) -> str:
        return (
            f"Idempotency-Key '{self.key}' was already used for a different request (job '{self.job_id}'); "
            "send the same body to get that job again, or use a new key for a new job"
        )


def request_sha256(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys, no whitespace): the same request gives
    the same hash whatever its key order or spacing."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _text(value: Any) -> str:
    """A Redis reply (bytes: the client does not decode responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _now() -> float:
    return round(time.time(), 3)


class JobStore:
    """Job records of one Redis database."""

    def __init__(self, client: redis.Redis, prefix: str = "gmpi") -> None:
        self.r = client
        self.prefix = prefix
        self._transition = self.r.register_script(_TRANSITION)
        self._update_live = self.r.register_script(_UPDATE_LIVE)
        self._create = self.r.register_script(_CREATE)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(
            redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        )

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:jobs"

    # -- create / read ------------------------------------------------------------------------------
    def create(
        self,
        job_type: str,
        params: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        request_sha256: str | None = None,
        owner: str | None = None,
        job_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """→ (record, created). With an idempotency key seen before (same owner, within a day), the
        existing job and False; IdempotencyConflict when ``request_sha256`` (the canonical hash of the
        request) differs from the one the key was first used with. ``owner``: the caller's owner id
        (``keys.owner_id`` of the API key; a raw key given here is stored hashed, never as it is)."""
        owner = normalize_owner(owner)
        job_id = job_id or new_id("job")
        created = time.time()  # full precision for the index: jobs made within one millisecond keep order
        now = round(created, 3)
        record = {
            "id": job_id,
            "type": job_type,
            "state": JobState.QUEUED.value,
            "params": params,
            "created_at": now,
            "updated_at": now,
            "progress": {"step": 0, "total": None, "eta_s": None, "message": "queued", "stage": "queued"},
            "result": None,
            "error": None,
            "artifacts": [],
            "metrics": {},
            "info": {},
            "attempts": 0,
            "idempotency_key": idempotency_key,
            "owner": owner,
        }
        fields: list[Any] = []
        for k, v in record.items():
            fields += [k, json.dumps(v)]
        idem = f"{self.prefix}:idem:{owner or ''}:{idempotency_key}" if idempotency_key else ""
        claim = json.dumps({"job_id": job_id, "request_sha256": request_sha256})
        out = self._create(
            keys=[self._key(job_id), self._index, idem],
            args=[repr(created), IDEMPOTENCY_TTL_S, claim, self._key(""), job_id, *fields],
        )
        if _text(out) == "created":
            return record, True
        first = json.loads(_text(out))
        first_id = str(first.get("job_id") or "")
        first_sha = first.get("request_sha256")
        if request_sha256 and first_sha and first_sha != request_sha256:
            raise IdempotencyConflict(idempotency_key or "", first_id)
        return self.get(first_id), False

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self.r.hgetall(self._key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def state(self, job_id: str) -> str:
        raw = self.r.hget(self._key(job_id), "state")
        if raw is None:
            raise JobNotFound(job_id)
        return str(json.loads(raw))

    def list(
        self,
        *,
        job_type: str | None = None,
        state: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first, filtered; → (page, total matching). ``owner``: only that owner's jobs (an owner
        id; records of older versions holding a raw key are matched by its hash; jobs without an owner
        belong to nobody and are listed only without the filter).

        Unfiltered, the page comes straight from the creation-time index (two round trips whatever the
        number of jobs). Filtered, the index is walked in pipelined batches reading only the three
        filter fields, and only the page's records are read whole. Index entries whose record is gone
        are dropped from the index on the way.
        """
        limit, offset = max(0, limit), max(0, offset)
        owner = normalize_owner(owner) if owner is not None else None
        if job_type is None and state is None and owner is None:
            total = int(self.r.zcard(self._index))
            ids = []
            if limit:
                ids = [_text(i) for i in self.r.zrevrange(self._index, offset, offset + limit - 1)]
            page = self._get_many(ids)
            return page, total - (len(ids) - len(page))
        page_ids: list[str] = []
        total = 0
        stale: list[str] = []
        batch = _LIST_BATCH
        for start in range(0, int(self.r.zcard(self._index)), batch):
            ids = [_text(i) for i in self.r.zrevrange(self._index, start, start + batch - 1)]
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self._key(job_id), "type", "state", "owner")
            for job_id, (typ, st, own) in zip(ids, pipe.execute(), strict=True):
                if typ is None:
                    stale.append(job_id)
                    continue
                if job_type and json.loads(typ) != job_type:
                    continue
                if state and json.loads(st) != state:
                    continue
                if owner is not None and (own is None or normalize_owner(json.loads(own)) != owner):
                    continue
                if offset <= total < offset + limit:
                    page_ids.append(job_id)
                total += 1
        if stale:
            self.r.zrem(self._index, *stale)
        return self._get_many(page_ids), total

    def _get_many(self, ids: builtins.list[str]) -> builtins.list[dict[str, Any]]:
        """Records of ``ids`` in order (one pipelined round trip); ids whose record is gone are
        skipped and dropped from the index."""
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key(job_id))
        raws = pipe.execute()
        stale = [job_id for job_id, raw in zip(ids, raws, strict=True) if not raw]
        if stale:
            self.r.zrem(self._index, *stale)
        return [{_text(k): json.loads(v) for k, v in raw.items()} for raw in raws if raw]

    # -- updates -----------------------------------------------------------------------------------
    def transition(self, job_id: str, state: JobState, **fields: Any) -> bool:
        """Move to ``state`` (with extra fields) unless the job already ended; → whether it moved."""
        extra = {k: json.dumps(v) for k, v in fields.items()}
        out = self._transition(
            keys=[self._key(job_id)], args=[JobState(state).value, _now(), json.dumps(extra)]
        )
        out = _text(out)
        if out == "missing":
            raise JobNotFound(job_id)
        return out == "ok"

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields while the job is live (not terminal); → False if it already ended."""
        args: list[Any] = []
        for k, v in {**fields, "updated_at": _now()}.items():
            args += [k, json.dumps(v)]
        out = self._update_live(keys=[self._key(job_id)], args=args)
        out = _text(out)
        if out == "missing":
            raise JobNotFound(job_id)
        return out == "ok"

    def progress(
        self,
        job_id: str,
        step: int,
        total: int | None,
        message: str = "",
        *,
        eta_s: float | object | None = SINCE_START,
        **extra: Any,
    ) -> bool:
        """Set the job's progress while it is live. ``eta_s``: seconds left as the caller estimated it
        (None: unknown), or by default the job's average rate since it first started (``started_at``)."""
        if eta_s is SINCE_START:
            eta_s = None
            rec_started = self.r.hget(self._key(job_id), "started_at")
            if rec_started and total and step > 0:
                elapsed = _now() - float(json.loads(rec_started))
                eta_s = round(elapsed / step * max(0, total - step), 1)
        return self.update(
            job_id, progress={"step": step, "total": total, "eta_s": eta_s, "message": message, **extra}
        )

    def add_artifacts(self, job_id: str, keys: Iterable[str]) -> None:
        keys = builtins.list(keys)
        self._merge_field(
            job_id, "artifacts", lambda cur: builtins.list(dict.fromkeys([*(cur or []), *keys]))
        )

    def merge_metrics(self, job_id: str, metrics: dict[str, Any]) -> None:
        self._merge_field(job_id, "metrics", lambda cur: {**(cur or {}), **metrics})

    def merge_info(self, job_id: str, info: dict[str, Any]) -> None:
        self._merge_field(job_id, "info", lambda cur: {**(cur or {}), **info})

    def incr_attempts(self, job_id: str) -> int:
        if not self.r.exists(self._key(job_id)):
            raise JobNotFound(job_id)
        return int(self.r.hincrby(self._key(job_id), "attempts", 1))  # a JSON int is a Redis integer

    def _merge_field(self, job_id: str, field: str, merge: Callable[[Any], Any]) -> None:
        """Read-merge-write of one JSON field under WATCH: concurrent merges (a trainer's checkpoint
        thread and its loop, say) all land instead of the last writer erasing the others."""
        key = self._key(job_id)

        def txn(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(key):
                raise JobNotFound(job_id)
            raw = pipe.hget(key, field)
            value = merge(json.loads(raw) if raw is not None else None)
            pipe.multi()
            pipe.hset(key, field, json.dumps(value))

        self.r.transaction(txn, key)

    def incr_counter(self, job_id: str, name: str, by: int = 1) -> int:
        return int(self.r.hincrby(f"{self._key(job_id)}:counters", name, by))

    def is_cancelled(self, job_id: str) -> bool:
        try:
            return self.state(job_id) == JobState.CANCELLED
        except JobNotFound:
            return True

    # -- deliveries of task messages and the dead-letter list ------------------------------------------
    def _delivery_key(self, task_id: str) -> str:
        return f"{self.prefix}:delivery:{task_id}"

    @property
    def deadletter_key(self) -> str:
        return f"{self.prefix}:deadletter"

    def count_delivery(self, task_id: str, ttl_s: int) -> int:
        """One more start of task message ``task_id`` that has not ended yet; → how many there are now
        (the counter lives ``ttl_s`` from this start: tasks without a job record are counted too)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.incr(self._delivery_key(task_id))
        pipe.expire(self._delivery_key(task_id), ttl_s)
        return int(pipe.execute()[0])

    def end_delivery(self, task_id: str) -> None:
        """The start of ``task_id`` ended in its worker (success, failure or retry): not a lost one."""
        self.r.delete(self._delivery_key(task_id))

    def dead_letter(self, entry: dict[str, Any]) -> None:
        """Record a task message that was given up on (newest first; the last ``DEADLETTER_MAX`` kept)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.deadletter_key, json.dumps(entry, default=str))
        pipe.ltrim(self.deadletter_key, 0, DEADLETTER_MAX - 1)
        pipe.execute()

    def dead_letters(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return [json.loads(v) for v in self.r.lrange(self.deadletter_key, 0, max(0, limit - 1))]

    def migrate_owners(self) -> int:
        """Replace the raw API keys that versions before ownership stored (job ``owner``, idempotency
        keys ``{prefix}:idem:{api key}:{key}``) by their owner ids; → keys changed. Idempotent and safe
        beside live traffic (readers hash a raw owner anyway); the gateway runs it at start. An
        idempotency key is renamed (TTL kept) when its job still names the raw key it was written under,
        else deleted: it only ever turned a retry into the first job, and must not keep a key's text."""
        changed = 0
        idem_prefix = f"{self.prefix}:idem:"
        for name in builtins.list(self.r.scan_iter(match=f"{idem_prefix}*", count=500)):
            key = _text(name)
            rest = key[len(idem_prefix) :]
            if rest.startswith(OWNER_PREFIX):
                continue
            raw_owner = None
            try:
                claim = json.loads(self.r.get(key) or b"null")
                job_id = claim.get("job_id") if isinstance(claim, dict) else claim
                own = self.r.hget(self._key(str(job_id)), "owner") if job_id else None
                raw_owner = json.loads(own) if own is not None else None
            except (ValueError, TypeError, redis.ResponseError):
                pass
            written_under = None  # the raw key the idempotency key was written under, if the job proves it
            if isinstance(raw_owner, str) and not is_owner_id(raw_owner) and rest.startswith(raw_owner + ":"):
                written_under = raw_owner
            elif isinstance(raw_owner, str) and is_owner_id(raw_owner):
                # the job was migrated already (another gateway's run at the same time): a prefix of the
                # idempotency key that hashes to the job's owner proves it just as well
                written_under = next(
                    (
                        rest[:i]
                        for i, ch in enumerate(rest)
                        if ch == ":" and i > 0 and normalize_owner(rest[:i]) == raw_owner
                    ),
                    None,
                )
            if written_under is not None:
                target = f"{idem_prefix}{normalize_owner(written_under)}:{rest[len(written_under) + 1 :]}"
                with contextlib.suppress(redis.ResponseError):  # expired meanwhile
                    self.r.renamenx(key, target)
            self.r.delete(key)  # a no-op after the rename; otherwise the key cannot be attributed
            changed += 1
        for name in builtins.list(self.r.scan_iter(match=f"{self.prefix}:job:*", count=500)):
            key = _text(name)
            if key.endswith(":counters"):
                continue
            try:
                raw = self.r.hget(key, "owner")
            except redis.ResponseError:  # not a job hash
                continue
            if raw is None:
                continue
            own = json.loads(raw)
            if own is None or is_owner_id(own):
                continue
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "owner") != raw:  # changed meanwhile
                        continue
                    pipe.multi()
                    pipe.hset(key, "owner", json.dumps(normalize_owner(own)))
                    pipe.execute()
                    changed += 1
                except redis.WatchError:
                    pass
        return changed

    def delete(self, job_id: str) -> None:
        self.r.delete(self._key(job_id), f"{self._key(job_id)}:counters")
        self.r.zrem(self._index, job_id)


def get_job_store(url: str | None = None) -> JobStore:
    from services.common.settings import get_settings

    return JobStore.from_url(url or get_settings().redis_url)
