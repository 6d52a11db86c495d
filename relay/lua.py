"""Lua scripts that change several keys at once, so no change is half written.

Every script reads the clock with Redis ``TIME``, so schedule scores come from
one clock however far the workers' own clocks drift apart.
"""

# A tracker hash lists the registrations it serves as fields 'r:{ID}', so a
# tracker with one registration needs no second key.

# Shared prelude: the server's time in seconds and milliseconds.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_ms = math.floor(now * 1000)
"""

# Prelude: the registration IDs a tracker hash (KEYS[n]) serves.
_SERVED = """
local function served(key)
  local ids = {}
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, 2) == 'r:' then ids[#ids + 1] = string.sub(field, 3) end
  end
  return ids
end
"""

# KEYS: dedupe, registration, tracker, poll schedule, schema, registration
#       counters, tenant, tenant index, key rate bucket, tracker states
# ARGV: registration ID, tracker ID, first delay s, deadline s, schema version,
#       rate per s (0 = no limit), burst, active cap (0 = no cap), '1' when
#       the registration wants video.status_changed, then field pairs
# Returns {1, new ID, now ms}, {0, existing ID, now ms}, {-1, '', now ms}
# when the keyspace is not at the expected schema version (say, after Redis
# restarted empty), so nothing is written that no worker would process,
# {-2, seconds to wait, now ms} when the API key is over its rate, and
# {-3, active count, now ms} when the tenant is at its cap. A repeated
# request finds its registration before either limit applies.
REGISTER = (
    _NOW
    + """
if redis.call('GET', KEYS[5]) ~= ARGV[5] then return {-1, '', now_ms} end
local existing = redis.call('GET', KEYS[1])
if existing then
  redis.call('HINCRBY', KEYS[6], 'reused', 1)
  return {0, existing, now_ms}
end
local rate = tonumber(ARGV[6])
local tokens = 0
if rate > 0 then
  local burst = tonumber(ARGV[7])
  local state = redis.call('HMGET', KEYS[9], 'tokens', 'at')
  tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then
    redis.call('HINCRBY', KEYS[6], 'rate_limited', 1)
    return {-2, tostring((1 - tokens) / rate), now_ms}
  end
end
local cap = tonumber(ARGV[8])
local active = tonumber(redis.call('HGET', KEYS[7], 'active') or '0')
if cap > 0 and active >= cap then
  redis.call('HINCRBY', KEYS[6], 'over_cap', 1)
  return {-3, active, now_ms}
end
if rate > 0 then
  redis.call('HSET', KEYS[9], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[9], 3600)
end
redis.call('HINCRBY', KEYS[6], 'created', 1)
redis.call('HINCRBY', KEYS[7], 'active', 1)
redis.call('SET', KEYS[1], ARGV[1])
-- updated_at_ms is left out until the first change, to keep the hash small.
local fields = {'created_at_ms', now_ms}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[8], 0, string.format('%013d:%s', now_ms, ARGV[1]))
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'polls', 0, 'errors', 0,
    'interval_s', ARGV[3], 'created_at_ms', now_ms,
    'deadline_ms', now_ms + math.floor(tonumber(ARGV[4]) * 1000))
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('HINCRBY', KEYS[10], 'unknown', 1)
end
if ARGV[9] == '1' then redis.call('HSET', KEYS[3], 'wants_status', 1) end
redis.call('HSET', KEYS[3], 'r:' .. ARGV[1], 1)
return {1, ARGV[1], now_ms}
"""
)

# KEYS: schedule
# ARGV: max members, lease s
# Returns the seconds until the next member is due (or -1), the score the
# claimed members now have, then the members. The score is written with 17
# significant digits, so it converts back to exactly the stored double.
CLAIM = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
local lease_until = now + tonumber(ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], lease_until, member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if head[2] then wait = math.max(0, tonumber(head[2]) - now) end
local out = {tostring(wait), string.format('%.17g', lease_until)}
for _, member in ipairs(due) do out[#out + 1] = member end
return out
"""
)

# KEYS: schedule
# ARGV: the score CLAIM returned, then the claimed members
# Makes members due now that still have the claim's score, so a stopping
# worker hands back the work it did not finish. A member that was finished,
# rescheduled, deleted or claimed again has another score, or none, and
# stays as it is. Returns the number of members released.
RELEASE = (
    _NOW
    + """
local lease_until = tonumber(ARGV[1])
local released = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == lease_until then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    released = released + 1
  end
end
return released
"""
)

# KEYS: tracker, poll schedule, tracker states
# ARGV: tracker ID, delay s, then field pairs
# A tracker that was deleted meanwhile stays deleted. A 'status' field moves
# the tracker between the counts of upstream statuses in 'tracker states'.
TRACKER_UPDATE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local fields = {'last_polled_at_ms', now_ms}
local status = nil
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'status' then status = ARGV[i + 1] end
end
if status then
  local old = redis.call('HGET', KEYS[1], 'status') or 'unknown'
  if old ~= status then
    redis.call('HINCRBY', KEYS[3], old, -1)
    redis.call('HINCRBY', KEYS[3], status, 1)
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[1], 'polls', 1)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: tracker, poll schedule, deliver schedule, tracker states, then for
#       each registration: its key, its event's key, its tenant
# ARGV: tracker ID, event type, snapshot JSON, polls, reason, retention s, n,
#       then for each registration: ID, event ID ('' when filtered out), body
# Returns -1 when a registration joined after the caller read the set. The
# caller then reads again. Returns -2 when the tracker is gone, because
# another worker finished it. Otherwise it returns the number of events
# created.
TRACKER_FINISH = (
    _NOW
    + _SERVED
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local retention = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local provided = {}
for i = 0, n - 1 do provided[ARGV[8 + i * 3]] = true end
for _, member in ipairs(served(KEYS[1])) do
  if not provided[member] then return -1 end
end
local created = 0
for i = 0, n - 1 do
  local reg_key = KEYS[5 + i * 3]
  local event_key = KEYS[6 + i * 3]
  local tenant_key = KEYS[7 + i * 3]
  local reg_id = ARGV[8 + i * 3]
  local event_id = ARGV[9 + i * 3]
  if redis.call('HGET', reg_key, 'state') == 'tracking' then
    local state = 'filtered'
    local dedupe_key = redis.call('HGET', reg_key, 'dedupe_key')
    if event_id ~= '' then
      state = 'delivering'
      redis.call('HSET', event_key, 'id', event_id, 'registration_id', reg_id,
        'callback_url', redis.call('HGET', reg_key, 'callback_url'),
        'tenant', redis.call('HGET', reg_key, 'tenant') or 'default',
        'job_id', redis.call('HGET', reg_key, 'job_id'),
        'dedupe_key', dedupe_key,
        'type', ARGV[2], 'body', ARGV[10 + i * 3], 'attempts', 0,
        'state', 'pending', 'created_at_ms', now_ms)
      redis.call('ZADD', KEYS[3], now, event_id)
      created = created + 1
    end
    redis.call('HSET', reg_key, 'state', state, 'event_id', event_id,
      'event_type', ARGV[2], 'snapshot', ARGV[3], 'polls', ARGV[4],
      'reason', ARGV[5], 'finished_at_ms', now_ms, 'updated_at_ms', now_ms)
    if state == 'filtered' then
      redis.call('HINCRBY', tenant_key, 'active', -1)
      redis.call('EXPIRE', reg_key, retention)
      redis.call('EXPIRE', dedupe_key, retention)
    end
  end
end
local status = redis.call('HGET', KEYS[1], 'status') or 'unknown'
redis.call('HINCRBY', KEYS[4], status, -1)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return created
"""
)

# KEYS: tracker, deliver schedule, then for each registration: its key and
#       its status event's key
# ARGV: status, n, then for each registration: ID, event ID, body
# Creates the video.status_changed events of one status at most once per
# tracker: the tracker's 'notified_{status}' field guards it. Only
# registrations still tracking get one. Returns the number created.
TRACKER_PROGRESS = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'notified_' .. ARGV[1], now_ms) == 0 then
  return 0
end
local created = 0
for i = 0, tonumber(ARGV[2]) - 1 do
  local reg_key = KEYS[3 + i * 2]
  local event_key = KEYS[4 + i * 2]
  if redis.call('HGET', reg_key, 'state') == 'tracking' then
    redis.call('HSET', event_key, 'id', ARGV[4 + i * 3],
      'registration_id', ARGV[3 + i * 3],
      'callback_url', redis.call('HGET', reg_key, 'callback_url'),
      'tenant', redis.call('HGET', reg_key, 'tenant') or 'default',
      'job_id', redis.call('HGET', reg_key, 'job_id'),
      'kind', 'progress', 'type', 'video.status_changed',
      'body', ARGV[5 + i * 3], 'attempts', 0, 'state', 'pending',
      'created_at_ms', now_ms)
    redis.call('ZADD', KEYS[2], now, ARGV[4 + i * 3])
    created = created + 1
  end
end
return created
"""
)

# KEYS: event, registration, deliver schedule, attempts, exhausted index,
#       tenant
# ARGV: event ID, attempt JSON, outcome (delivered|retry|exhausted|gone),
#       delay s, attempts kept, retention s
# Returns {changed (0 or 1), ms since the event was created}; the second is
# 0 unless the event reached a final outcome.
# Only a pending event changes, so a late or repeated attempt cannot undo a
# delivery or revive a deleted registration's event. Delivered and gone
# events expire after the retention; exhausted ones stay for redelivery.
# The dedupe key is read from the event, so this script, like the rest,
# expects a single Redis primary rather than a cluster.
EVENT_RECORD = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {0, 0}
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_attempt_at_ms', now_ms)
redis.call('LPUSH', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
local outcome = ARGV[3]
if outcome == 'retry' then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0}
end
redis.call('HSET', KEYS[1], 'state', outcome, 'finished_at_ms', now_ms)
redis.call('ZREM', KEYS[3], ARGV[1])
local created_ms = redis.call('HGET', KEYS[1], 'created_at_ms') or now_ms
local since_ms = now_ms - tonumber(created_ms)
local terminal = redis.call('HGET', KEYS[1], 'kind') ~= 'progress'
local retention = tonumber(ARGV[6])
if not terminal then
  -- A status event leaves the registration alone and is kept only for
  -- the retention period, whatever its outcome.
  redis.call('EXPIRE', KEYS[1], retention)
  redis.call('EXPIRE', KEYS[4], retention)
  return {1, since_ms}
end
if outcome == 'exhausted' then redis.call('SADD', KEYS[5], ARGV[1]) end
local reg_state = redis.call('HGET', KEYS[2], 'state')
if reg_state then
  if reg_state == 'delivering' then redis.call('HINCRBY', KEYS[6], 'active', -1) end
  redis.call('HSET', KEYS[2], 'state', outcome, 'updated_at_ms', now_ms)
end
if outcome ~= 'exhausted' then
  local dedupe_key = redis.call('HGET', KEYS[1], 'dedupe_key')
  for i = 1, 4 do
    if i ~= 3 then redis.call('EXPIRE', KEYS[i], retention) end
  end
  if dedupe_key then redis.call('EXPIRE', dedupe_key, retention) end
end
return {1, since_ms}
"""
)

# KEYS: dedupe, registration, tracker, poll schedule, event, deliver
#       schedule, attempts, exhausted index, tenant, tenant index, status
#       event, status event attempts, tracker states
# ARGV: registration ID, tracker ID, event ID, tenant index member, status
#       event ID
# Removes a registration and its event; its tracker goes too when no
# registration is left.
DELETE = (
    _SERVED
    + """
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return 0 end
if state == 'tracking' or state == 'delivering' then
  redis.call('HINCRBY', KEYS[9], 'active', -1)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5], KEYS[7], KEYS[11], KEYS[12])
redis.call('ZREM', KEYS[6], ARGV[3], ARGV[5])
redis.call('SREM', KEYS[8], ARGV[3])
redis.call('ZREM', KEYS[10], ARGV[4])
redis.call('HDEL', KEYS[3], 'r:' .. ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 and #served(KEYS[3]) == 0 then
  local status = redis.call('HGET', KEYS[3], 'status') or 'unknown'
  redis.call('HINCRBY', KEYS[13], status, -1)
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return 1
"""
)

# KEYS: token bucket, pause
# ARGV: rate per s (0 = unlimited), burst, tokens requested
# Returns {granted, seconds to wait before asking again} (the wait as text,
# since Redis turns Lua numbers into integers).
ACQUIRE = (
    _NOW
    + """
local pause_ms = redis.call('PTTL', KEYS[2])
if pause_ms > 0 then return {0, tostring(pause_ms / 1000)} end
local want = tonumber(ARGV[3])
local rate = tonumber(ARGV[1])
if rate <= 0 then return {want, '0'} end
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
local wait = 0
if granted < want then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""
)

# KEYS: pause
# ARGV: pause ms
# Extends a key's pause; a shorter Retry-After never cuts a longer one short.
# Returns 1 when it started or extended the pause, 0 otherwise.
PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return 1
end
return 0
"""

# KEYS: schedule
# ARGV: delay s, then members
# Moves claimed members to ``now + delay`` without touching their trackers.
DEFER = (
    _NOW
    + """
local due = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', due, ARGV[i]) end
return #ARGV - 1
"""
)

# KEYS: event, registration, deliver schedule, attempts, exhausted index,
#       tenant
# ARGV: event ID
# Sends a stored event again with the same ID: its state returns to pending,
# its attempt count restarts, and the retention expiry is lifted. Returns 0
# when there is no event, 2 when it is already pending, 1 otherwise.
REDELIVER = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'pending' then return 2 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', 0)
redis.call('HINCRBY', KEYS[1], 'redeliveries', 1)
redis.call('HDEL', KEYS[1], 'finished_at_ms')
local dedupe_key = redis.call('HGET', KEYS[1], 'dedupe_key')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[4])
if dedupe_key then redis.call('PERSIST', dedupe_key) end
local reg_state = redis.call('HGET', KEYS[2], 'state')
if reg_state and reg_state ~= 'delivering' and reg_state ~= 'tracking' then
  redis.call('HINCRBY', KEYS[6], 'active', 1)
end
redis.call('HSET', KEYS[2], 'state', 'delivering', 'updated_at_ms', now_ms)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
return 1
"""
)

# KEYS: worker heartbeats
# ARGV: worker name, seconds to keep a heartbeat
# Records the worker's heartbeat at the Redis clock and drops the heartbeats
# of workers that stopped without removing theirs.
HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return 1
"""
)
