-- Apply one slice of one Kafka (topic, partition) of engagements to that partition's shard.
--
-- Atomic and idempotent: events at or below the stored watermark are skipped, the watermark is
-- set in the same call, so a replayed slice is a no-op. The whole slice is validated before the
-- first write (Redis does not roll back a script that fails half-way).
--
-- KEYS[1]  the shard's watermark key "<prefix>:{<topic>.<partition>}:<wm>". Every other key is
--          built from it and carries the same hash tag, hence the same cluster slot.
-- ARGV[1]  key layout JSON (state/keys.py: lua_layout)
-- ARGV[2..11] seq_len, k_max, lambda, pair_horizon_s, max_pairs, max_event_age_s, hub_alpha,
--          context_len, rebase_exponent (ln of the rebase factor limit), trim_every
-- ARGV[12] action weights JSON {action: weight}
-- ARGV[13] context action name
-- ARGV[14] batch JSON [[offset, user, item, action, ts, weight|null, context|null], ...]
-- Returns {applied, skipped, watermark as a decimal string}.
--
-- The rules and their arithmetic order mirror state/coengagement.py (the reference); change both.

local L = cjson.decode(ARGV[1])
local C = {
  seq_len = tonumber(ARGV[2]), k_max = tonumber(ARGV[3]), lam = tonumber(ARGV[4]),
  horizon = tonumber(ARGV[5]), max_pairs = tonumber(ARGV[6]), max_age = tonumber(ARGV[7]),
  alpha = tonumber(ARGV[8]), ctx_len = tonumber(ARGV[9]), rebase_exp = tonumber(ARGV[10]),
  trim_every = tonumber(ARGV[11]), aw = cjson.decode(ARGV[12]), ctx_action = ARGV[13],
}
local wm_key = KEYS[1]
if string.sub(wm_key, -#L.wm) ~= L.wm then
  return redis.error_reply('sagestream: KEYS[1] is not a watermark key')
end
local base = string.sub(wm_key, 1, #wm_key - #L.wm)
local SEP, ES = L.sep, L.entry_sep

local function fmt(x) return string.format('%.17g', x) end
local function key(kind, id) return base .. kind .. SEP .. id end

-- validation -----------------------------------------------------------------------------

local function valid_id(s)
  return type(s) == 'string' and #s <= 128 and string.find(s, '^[A-Za-z0-9_%.:@%-]+$') ~= nil
end

local function finite(x)
  return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge
end

local function check_event(e, prev_off)
  if type(e) ~= 'table' then return 'not an array' end
  local off = e[1]
  if not finite(off) or off < 0 or off ~= math.floor(off) then return 'bad offset' end
  if prev_off ~= nil and off <= prev_off then return 'offsets not increasing' end
  if not valid_id(e[2]) then return 'bad user id' end
  if not valid_id(e[3]) then return 'bad item id' end
  if type(e[4]) ~= 'string' or C.aw[e[4]] == nil then return 'unknown action' end
  if not finite(e[5]) then return 'bad ts' end
  if e[6] ~= cjson.null and (not finite(e[6]) or e[6] < 0) then return 'bad weight' end
  if e[7] ~= cjson.null and not valid_id(e[7]) then return 'bad context id' end
  return nil
end

local function check_batch(raw)
  local ok, batch = pcall(cjson.decode, raw)
  if not ok or type(batch) ~= 'table' or #batch == 0 then return nil, 'batch is not a JSON array' end
  local prev_off = nil
  for idx = 1, #batch do
    local why = check_event(batch[idx], prev_off)
    if why then return nil, 'event ' .. (idx - 1) .. ': ' .. why end
    prev_off = batch[idx][1]
  end
  return batch, nil
end

-- state steps ----------------------------------------------------------------------------

local function split_entry(s)
  local a = string.find(s, ES, 1, true)
  local b = string.find(s, ES, a + 1, true)
  return string.sub(s, 1, a - 1), string.sub(s, a + 1, b - 1), tonumber(string.sub(s, b + 1))
end

-- Per-call caches: item degrees and decay origins are read once and then kept here, version and
-- degree increments are summed and written once at the end, and an entity is marked dirty once
-- per call. Nothing outside this call observes the difference.
local degrees, origins, deltas, marked = {}, {}, {deg = {}, ver = {}}, {users = {}, items = {}}

local function bump(field, item)
  deltas[field][item] = (deltas[field][item] or 0) + 1
end

local function degree(item)
  local d = degrees[item]
  if d == nil then
    d = tonumber(redis.call('HGET', key(L.item, item), L.f_degree)) or 0
    degrees[item] = d
  end
  return d
end

local function origin(item)
  local t0 = origins[item]
  if t0 == nil then
    t0 = tonumber(redis.call('HGET', key(L.item, item), L.f_t0)) or false
    origins[item] = t0
  end
  return t0
end

local function set_origin(item, ts)
  origins[item] = ts
  redis.call('HSET', key(L.item, item), L.f_t0, fmt(ts))
end

local function mark(kind, member, ts)
  if marked[kind][member] then return end
  marked[kind][member] = true
  if redis.call('ZADD', base .. L['dirty_' .. kind], 'NX', fmt(ts), member) == 0 then
    redis.call('HSET', base .. L['redirty_' .. kind], member, '1')
  end
end

local function flush_items()
  for item, n in pairs(deltas.deg) do redis.call('HINCRBY', key(L.item, item), L.f_degree, n) end
  for item, n in pairs(deltas.ver) do redis.call('HINCRBY', key(L.item, item), L.f_version, n) end
end

-- Sequence append + user version + ts_max; returns the previous entries and the too-old flag.
local function user_step(user, item, action, ts)
  local seq_key = key(L.seq, user)
  local prev = redis.call('LRANGE', seq_key, -C.max_pairs, -1)
  redis.call('RPUSH', seq_key, item .. ES .. action .. ES .. fmt(ts))
  redis.call('LTRIM', seq_key, -C.seq_len, -1)
  local ukey = key(L.user, user)
  redis.call('HINCRBY', ukey, L.f_version, 1)
  local ts_max = tonumber(redis.call('HGET', ukey, L.f_ts_max))
  local too_old = ts_max ~= nil and ts < ts_max - C.max_age
  if ts_max == nil or ts > ts_max then redis.call('HSET', ukey, L.f_ts_max, fmt(ts)) end
  return prev, too_old
end

-- Add base, damped by other's degree and forward-decayed, to item's list for other.
local function add_edge(item, other, pair_base, ts, touched)
  local damp = (1 + degree(other)) ^ (-C.alpha)
  local nkey = key(L.nb, item)
  local t0 = origin(item)
  if not t0 then
    t0 = ts
    set_origin(item, ts)
  elseif C.lam * (ts - t0) > C.rebase_exp then
    local factor = math.exp(-C.lam * (ts - t0))
    local flat = redis.call('ZRANGE', nkey, 0, -1, 'WITHSCORES')
    for i = 1, #flat, 2 do
      redis.call('ZADD', nkey, fmt(tonumber(flat[i + 1]) * factor), flat[i])
    end
    t0 = ts
    set_origin(item, ts)
  end
  local growth = math.exp(C.lam * (ts - t0))
  redis.call('ZINCRBY', nkey, fmt(pair_base * damp * growth), other)
  touched[nkey] = true
end

local function pair(ev, other, other_action, ev_weight, touched)
  local pair_base = math.sqrt(C.aw[ev.action] * C.aw[other_action]) * ev_weight
  add_edge(ev.item, other, pair_base, ev.ts, touched)
  add_edge(other, ev.item, pair_base, ev.ts, touched)
  bump('ver', other)
  mark('items', other, ev.ts)
end

local function context_step(ev, ev_weight, seen, touched)
  local ckey = key(L.ctx, ev.ctx)
  local saves = redis.call('LRANGE', ckey, -C.ctx_len, -1)
  for idx = #saves, 1, -1 do
    local cut = string.find(saves[idx], ES, 1, true)
    local other = string.sub(saves[idx], 1, cut - 1)
    if other ~= ev.item and not seen[other] then
      seen[other] = true
      pair(ev, other, C.ctx_action, ev_weight, touched)
    end
  end
  redis.call('RPUSH', ckey, ev.item .. ES .. fmt(ev.ts))
  redis.call('LTRIM', ckey, -C.ctx_len, -1)
end

local function apply_event(ev, touched)
  local prev, too_old = user_step(ev.user, ev.item, ev.action, ev.ts)
  degrees[ev.item] = degree(ev.item) + 1
  bump('deg', ev.item)
  bump('ver', ev.item)
  mark('users', ev.user, ev.ts)
  mark('items', ev.item, ev.ts)
  if too_old then return end
  local ev_weight = ev.weight or 1.0
  local seen = {}
  for idx = #prev, 1, -1 do
    local other, other_action, other_ts = split_entry(prev[idx])
    if other ~= ev.item and not seen[other] and math.abs(ev.ts - other_ts) <= C.horizon then
      seen[other] = true
      pair(ev, other, other_action, ev_weight, touched)
    end
  end
  if ev.ctx and ev.action == C.ctx_action then context_step(ev, ev_weight, seen, touched) end
end

-- main -----------------------------------------------------------------------------------

-- Lists are trimmed to k_max when the offsets enter a new block of trim_every offsets, so the
-- result depends on the offsets alone, not on how the runtime cut batches (see the reference).
local block_key, pending_key = base .. L.trim_block, base .. L.trim_pending

local function trim_pending(touched)
  for _, nkey in ipairs(redis.call('SMEMBERS', pending_key)) do touched[nkey] = true end
  for nkey in pairs(touched) do redis.call('ZREMRANGEBYRANK', nkey, 0, -(C.k_max + 1)) end
  redis.call('DEL', pending_key)
end

local function remember_pending(touched)
  local members = {}
  for nkey in pairs(touched) do
    members[#members + 1] = nkey
    if #members == 1000 then
      redis.call('SADD', pending_key, unpack(members))
      members = {}
    end
  end
  if #members > 0 then redis.call('SADD', pending_key, unpack(members)) end
end

local batch, why = check_batch(ARGV[14])
if batch == nil then return redis.error_reply('sagestream: invalid batch: ' .. why) end

local raw_wm = redis.call('GET', wm_key)
local wm = raw_wm and tonumber(raw_wm) or -1
local applied, skipped, last = 0, 0, nil
local touched = {}
local block = tonumber(redis.call('GET', block_key))
for idx = 1, #batch do
  local e = batch[idx]
  if e[1] <= wm then
    skipped = skipped + 1
  else
    local b = math.floor(e[1] / C.trim_every)
    if block == nil then
      block = b
    elseif b > block then
      trim_pending(touched)
      touched = {}
      block = b
    end
    local weight, ctx = e[6], e[7]
    if weight == cjson.null then weight = nil end
    if ctx == cjson.null then ctx = nil end
    apply_event({user = e[2], item = e[3], action = e[4], ts = e[5], weight = weight, ctx = ctx},
      touched)
    applied = applied + 1
    last = e[1]
  end
end
flush_items()
remember_pending(touched)
if block ~= nil then redis.call('SET', block_key, string.format('%.0f', block)) end
if last ~= nil then
  wm = last
  redis.call('SET', wm_key, string.format('%.0f', last))
end
return {applied, skipped, string.format('%.0f', wm)}
