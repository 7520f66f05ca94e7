-- Apply one slice of one Kafka (topic, partition) of engagements to that partition's shard.
--
-- Atomic and idempotent: events at or below the stored watermark are skipped, the watermark is
-- set in the same call, so a replayed slice is a no-op. The whole slice is validated before the
-- first write (Redis does not roll back a script that fails half-way).
--
-- KEYS[1]  the shard's watermark key "<prefix>:{<topic>.<partition>}:<wm>". Every other key is
--          built from it and carries the same hash tag, hence the same cluster slot.
-- ARGV[1]  key layout JSON (state/keys.py: lua_layout)
-- ARGV[2..13] seq_len, k_max, lambda, pair_horizon_s, max_pairs, max_event_age_s, hub_alpha,
--          context_len, rebase_exponent (ln of the rebase factor limit), trim_every,
--          dedup_window (event ids remembered per user; 0: off), hold_max (holders kept per
--          item; 0: no holder index)
-- ARGV[14] action weights JSON {action: weight}
-- ARGV[15] context action name
-- ARGV[16] batch JSON [[offset, user, item, action, ts, weight|null, context|null,
--          event_id|null], ...]
-- Returns {applied, skipped, watermark as a decimal string, duplicates, holders capped}: a
-- duplicate (rule 0 of the reference) moves the watermark but is not counted as applied; holders
-- capped are users this call took out of an item's holders at the `hold_max` cap (rule 8).
--
-- The rules and their arithmetic order mirror state/coengagement.py (the reference); change both.

local L = cjson.decode(ARGV[1])
local C = {
  seq_len = tonumber(ARGV[2]), k_max = tonumber(ARGV[3]), lam = tonumber(ARGV[4]),
  horizon = tonumber(ARGV[5]), max_pairs = tonumber(ARGV[6]), max_age = tonumber(ARGV[7]),
  alpha = tonumber(ARGV[8]), ctx_len = tonumber(ARGV[9]), rebase_exp = tonumber(ARGV[10]),
  trim_every = tonumber(ARGV[11]), dedup = tonumber(ARGV[12]), hold_max = tonumber(ARGV[13]),
  aw = cjson.decode(ARGV[14]), ctx_action = ARGV[15],
}
local wm_key = KEYS[1]
if string.sub(wm_key, -#L.wm) ~= L.wm then
  return redis.error_reply('sagestream: KEYS[1] is not a watermark key')
end
local base = string.sub(wm_key, 1, #wm_key - #L.wm)
local SEP, ES = L.sep, L.entry_sep

-- Hot-path library functions as upvalues: a global lookup per use adds up over ~10^4 edges.
local exp, sqrt, abs, format, find, sub = math.exp, math.sqrt, math.abs, string.format,
  string.find, string.sub
local LAM, ALPHA, REBASE_EXP, AW = C.lam, C.alpha, C.rebase_exp, C.aw

local function fmt(x) return format('%.17g', x) end
local function key(kind, id) return base .. kind .. SEP .. id end

-- validation -----------------------------------------------------------------------------

local valid_ids = {}  -- ids repeat within a slice; match each distinct one once

local function valid_id(s)
  if valid_ids[s] then return true end
  local ok = type(s) == 'string' and #s <= 128 and find(s, '^[A-Za-z0-9_%.:@%-]+$') ~= nil
  if ok then valid_ids[s] = true end
  return ok
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
  if e[8] ~= nil and e[8] ~= cjson.null and not valid_id(e[8]) then return 'bad event id' end
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
--
-- Why per-call mirrors: a redis.call costs far more than the Lua around it, and one slice touches
-- the same users, items, contexts and lists again and again. Each is read at most once per call
-- into a Lua table, updated there, and written back once: at the end of the call, or for a
-- neighbour list before anything reads it (a trim at a block boundary, a rebase). A write stores
-- exactly what the per-event commands stored before: list appends in order, integer counters, and
-- for a neighbour score the old score plus each increment, added one by one in event order (the
-- same doubles ZINCRBY would add). So the state stays bit-identical and independent of the cuts.

local CHUNK = 500  -- members per variadic command, well below Lua's unpack limit
local WINDOW = math.min(C.max_pairs, C.seq_len)  -- sequence entries an event can pair with

local function fmt_int(n) return string.format('%.0f', n) end

local function split_entry(s)
  local a = string.find(s, ES, 1, true)
  local b = string.find(s, ES, a + 1, true)
  return string.sub(s, 1, a - 1), string.sub(s, a + 1, b - 1), tonumber(string.sub(s, b + 1))
end

-- cmd key args[from..] in chunks of CHUNK groups of `stride` arguments; the last reply.
local function call_chunked(cmd, k, args, stride, from)
  local reply
  local width = CHUNK * stride
  for i = from or 1, #args, width do
    reply = redis.call(cmd, k, unpack(args, i, math.min(i + width - 1, #args)))
  end
  return reply
end

local function zmscore(k, members)
  if #members <= CHUNK then return redis.call('ZMSCORE', k, unpack(members)) end
  local out = {}
  for i = 1, #members, CHUNK do
    local part = redis.call('ZMSCORE', k, unpack(members, i, math.min(i + CHUNK - 1, #members)))
    for j = 1, #part do out[i + j - 1] = part[j] end
  end
  return out
end

-- Appends to a capped list (sequence, context): only the last `cap` can survive the trim.
local function flush_appends(lkey, new, cap)
  if #new == 0 then return end
  if call_chunked('RPUSH', lkey, new, 1, math.max(1, #new - cap + 1)) > cap then
    redis.call('LTRIM', lkey, -cap, -1)
  end
end

-- items: version, degree and decay origin, read with one HMGET, written with one HSET
local items = {}

local function item_state(id)
  local it = items[id]
  if it == nil then
    local raw = redis.call('HMGET', key(L.item, id), L.f_version, L.f_degree, L.f_t0)
    it = {v = tonumber(raw[1]) or 0, deg = tonumber(raw[2]) or 0, t0 = tonumber(raw[3]) or false,
      dv = 0, ddeg = 0, t0_set = false, damp_deg = -1, damp = 0}
    items[id] = it
  end
  return it
end

-- (1 + degree)^-alpha, recomputed only when the degree moved since the last pair.
local function damping(id)
  local it = items[id] or item_state(id)
  if it.damp_deg ~= it.deg then
    it.damp_deg, it.damp = it.deg, (1 + it.deg) ^ (-ALPHA)
  end
  return it.damp
end

local function flush_items()
  for id, it in pairs(items) do
    local args = {}
    if it.dv > 0 then args[#args + 1] = L.f_version; args[#args + 1] = fmt_int(it.v + it.dv) end
    if it.ddeg > 0 then args[#args + 1] = L.f_degree; args[#args + 1] = fmt_int(it.deg) end
    if it.t0_set then args[#args + 1] = L.f_t0; args[#args + 1] = fmt(it.t0) end
    if #args > 0 then redis.call('HSET', key(L.item, id), unpack(args)) end
  end
end

-- users: the sequence's pairable tail {item, action, ts}, appends, version and ts_max
local users = {}

local function user_state(id)
  local u = users[id]
  if u == nil then
    local raw = redis.call('LRANGE', key(L.seq, id), -C.max_pairs, -1)
    local seq = {}
    for i = 1, #raw do seq[i] = {split_entry(raw[i])} end
    local h = redis.call('HMGET', key(L.user, id), L.f_version, L.f_ts_max)
    u = {seq = seq, new = {}, v = tonumber(h[1]) or 0, dv = 0, ts_max = tonumber(h[2]),
      ts_set = false, ids = nil}
    users[id] = u
  end
  return u
end

-- Rule 0: the user's window of recent event ids, loaded on the first event that carries one.
local function duplicate(u, uid, eid)
  if eid == nil or C.dedup == 0 then return false end
  local w = u.ids
  if w == nil then
    w = {list = redis.call('LRANGE', key(L.eid, uid), -C.dedup, -1), set = {}, new = {}, head = 1}
    for i = 1, #w.list do w.set[w.list[i]] = true end
    u.ids = w
  end
  if w.set[eid] then return true end
  w.list[#w.list + 1], w.set[eid], w.new[#w.new + 1] = eid, true, eid
  if #w.list - w.head + 1 > C.dedup then
    w.set[w.list[w.head]] = nil
    w.head = w.head + 1
  end
  return false
end

local function seq_push(u, ev)
  local seq = u.seq
  seq[#seq + 1] = {ev.item, ev.action, ev.ts}
  while #seq > WINDOW do table.remove(seq, 1) end
  u.new[#u.new + 1] = ev.item .. ES .. ev.action .. ES .. fmt(ev.ts)
end

local function flush_users()
  for id, u in pairs(users) do
    flush_appends(key(L.seq, id), u.new, C.seq_len)
    if u.ids ~= nil then flush_appends(key(L.eid, id), u.ids.new, C.dedup) end
    if u.ts_set then
      redis.call('HSET', key(L.user, id), L.f_version, fmt_int(u.v + u.dv), L.f_ts_max,
        fmt(u.ts_max))
    else
      redis.call('HSET', key(L.user, id), L.f_version, fmt_int(u.v + u.dv))
    end
  end
end

-- contexts: the item ids of the last ctx_len saves, and appends
local contexts = {}

local function context_state(id)
  local c = contexts[id]
  if c == nil then
    local raw = redis.call('LRANGE', key(L.ctx, id), -C.ctx_len, -1)
    c = {saves = {}, new = {}}
    for i = 1, #raw do c.saves[i] = string.sub(raw[i], 1, string.find(raw[i], ES, 1, true) - 1) end
    contexts[id] = c
  end
  return c
end

local function flush_contexts()
  for id, c in pairs(contexts) do flush_appends(key(L.ctx, id), c.new, C.ctx_len) end
end

-- dirty marks: first ts per entity; existing marks get a redirty flag instead (one ZMSCORE)
local marks = {users = {ids = {}, ts = {}}, items = {ids = {}, ts = {}}}

local function mark(kind, member, ts)
  local m = marks[kind]
  if m.ts[member] ~= nil then return end
  m.ts[member] = ts
  m.ids[#m.ids + 1] = member
end

local function flush_marks(kind)
  local m = marks[kind]
  if #m.ids == 0 then return end
  local dkey = base .. L['dirty_' .. kind]
  local scores = zmscore(dkey, m.ids)
  local add, again = {}, {}
  for i, member in ipairs(m.ids) do
    if scores[i] then
      again[#again + 1] = member; again[#again + 1] = '1'
    else
      add[#add + 1] = fmt(m.ts[member]); add[#add + 1] = member
    end
  end
  if #add > 0 then call_chunked('ZADD', dkey, add, 2) end
  if #again > 0 then call_chunked('HSET', base .. L['redirty_' .. kind], again, 2) end
end

-- holders (rule 8): per item, each user's newest offset on it in this call; written with one
-- ZADD per item (an offset is always newer than the stored one) and capped to the newest
-- hold_max. Every holder came with an applied event, so an item holds at most its degree in this
-- shard: only an item whose degree passed the cap (a hub) can need the cut.
local holds = {}

local function hold(item, user, off)
  if C.hold_max == 0 then return end
  local h = holds[item]
  if h == nil then h = {ids = {}, off = {}}; holds[item] = h end
  if h.off[user] == nil then h.ids[#h.ids + 1] = user end
  h.off[user] = off
end

local function flush_holds()
  local capped = 0
  for item, h in pairs(holds) do
    local hkey, args = key(L.hold, item), {}
    for i, user in ipairs(h.ids) do args[2 * i - 1], args[2 * i] = fmt_int(h.off[user]), user end
    call_chunked('ZADD', hkey, args, 2)
    if items[item].deg > C.hold_max then
      capped = capped + redis.call('ZREMRANGEBYRANK', hkey, 0, -(C.hold_max + 1))
    end
  end
  return capped
end

-- neighbour lists: pending increments per (list, member), in order (a number, or a list of them)
local pending = {}

local function flush_list(item)
  local p = pending[item]
  if p == nil then return end
  pending[item] = nil
  local nkey = key(L.nb, item)
  local members = {}
  for member in pairs(p) do members[#members + 1] = member end
  if #members == 1 and type(p[members[1]]) == 'number' then
    redis.call('ZINCRBY', nkey, fmt(p[members[1]]), members[1])
    return
  end
  local scores, args = zmscore(nkey, members), {}
  for i = 1, #members do
    local member = members[i]
    local inc, s = p[member], tonumber(scores[i])
    if type(inc) == 'number' then
      s = s and s + inc or inc
    else
      for j = 1, #inc do s = s and s + inc[j] or inc[j] end
    end
    args[2 * i - 1], args[2 * i] = format('%.17g', s), member
  end
  call_chunked('ZADD', nkey, args, 2)
end

local function flush_lists()
  for item in pairs(pending) do flush_list(item) end
end

local function add_increment(item, other, inc)
  local p = pending[item]
  if p == nil then p = {}; pending[item] = p end
  local cur = p[other]
  if cur == nil then
    p[other] = inc
  elseif type(cur) == 'number' then
    p[other] = {cur, inc}
  else
    cur[#cur + 1] = inc
  end
end

-- Scale the stored list to a new origin `ts` (its pending increments are written first).
local function rebase(item, it, ts)
  flush_list(item)
  local nkey = key(L.nb, item)
  local factor = exp(-LAM * (ts - it.t0))
  local flat, args = redis.call('ZRANGE', nkey, 0, -1, 'WITHSCORES'), {}
  for i = 1, #flat, 2 do
    args[#args + 1] = fmt(tonumber(flat[i + 1]) * factor); args[#args + 1] = flat[i]
  end
  if #args > 0 then call_chunked('ZADD', nkey, args, 2) end
  it.t0, it.t0_set = ts, true
end

-- sqrt(aw(a) * aw(b)) per pair of actions, computed once per call instead of once per pair.
local ROOT = {}
for a, wa in pairs(AW) do
  ROOT[a] = {}
  for b, wb in pairs(AW) do ROOT[a][b] = sqrt(wa * wb) end
end

-- Forward-decay growth of item's list at ts, moving its origin first if unset or too far back.
local function growth_at(item, it, ts)
  if not it.t0 then
    it.t0, it.t0_set = ts, true
  elseif LAM * (ts - it.t0) > REBASE_EXP then
    rebase(item, it, ts)
  end
  return exp(LAM * (ts - it.t0))
end

-- One pair of an event: base, damped by the other's degree and forward-decayed, added to each
-- item's list for the other. `src` caches the event's own side, which every pair of one event
-- shares: its degree moved before the pairs, and its origin can move only on the first pair.
local function pair(src, other, other_action)
  local ev = src.ev
  local pair_base = ROOT[ev.action][other_action] * src.weight
  local damp_other = damping(other)
  if src.growth == nil then
    src.growth = growth_at(ev.item, src.it, ev.ts)
    src.damp = damping(ev.item)
    src.touched[ev.item] = true
  end
  add_increment(ev.item, other, pair_base * damp_other * src.growth)
  local o = items[other]  -- loaded by damping
  add_increment(other, ev.item, pair_base * src.damp * growth_at(other, o, ev.ts))
  src.touched[other] = true
  o.dv = o.dv + 1
  mark('items', other, ev.ts)
end

local function context_step(src, seen)
  local ev = src.ev
  local c = context_state(ev.ctx)
  local saves = c.saves
  for idx = #saves, 1, -1 do
    local other = saves[idx]
    if other ~= ev.item and not seen[other] then
      seen[other] = true
      pair(src, other, C.ctx_action)
    end
  end
  saves[#saves + 1] = ev.item
  if #saves > C.ctx_len then table.remove(saves, 1) end
  c.new[#c.new + 1] = ev.item .. ES .. fmt(ev.ts)
end

-- Pairs of one event that is not too old: its user's previous entries, then its context.
local function pair_event(ev, prev, touched)
  local src = {ev = ev, it = items[ev.item], weight = ev.weight or 1.0, touched = touched}
  local seen, ts, horizon = {}, ev.ts, C.horizon
  for idx = #prev, 1, -1 do
    local entry = prev[idx]
    local other = entry[1]
    if other ~= ev.item and not seen[other] and abs(ts - entry[3]) <= horizon then
      seen[other] = true
      pair(src, other, entry[2])
    end
  end
  if ev.ctx and ev.action == C.ctx_action then context_step(src, seen) end
end

local function apply_event(ev, touched)
  local u = user_state(ev.user)
  if duplicate(u, ev.user, ev.eid) then return false end
  hold(ev.item, ev.user, ev.off)
  u.dv = u.dv + 1
  local too_old = u.ts_max ~= nil and ev.ts < u.ts_max - C.max_age
  if u.ts_max == nil or ev.ts > u.ts_max then u.ts_max, u.ts_set = ev.ts, true end
  local it = item_state(ev.item)
  it.deg, it.ddeg, it.dv = it.deg + 1, it.ddeg + 1, it.dv + 1
  mark('users', ev.user, ev.ts)
  mark('items', ev.item, ev.ts)
  if not too_old then pair_event(ev, u.seq, touched) end
  seq_push(u, ev)
  return true
end

-- main -----------------------------------------------------------------------------------

-- Lists are trimmed to k_max when the offsets enter a new block of trim_every offsets, so the
-- result depends on the offsets alone, not on how the runtime cut batches (see the reference).
-- `touched` holds item ids touched in this call; the trim queue holds neighbour list keys.
local block_key, pending_key = base .. L.trim_block, base .. L.trim_pending

local function trim_pending(touched)
  flush_lists()
  local lists = {}
  for _, nkey in ipairs(redis.call('SMEMBERS', pending_key)) do lists[nkey] = true end
  for item in pairs(touched) do lists[key(L.nb, item)] = true end
  for nkey in pairs(lists) do redis.call('ZREMRANGEBYRANK', nkey, 0, -(C.k_max + 1)) end
  redis.call('DEL', pending_key)
end

local function remember_pending(touched)
  local members = {}
  for item in pairs(touched) do members[#members + 1] = key(L.nb, item) end
  if #members > 0 then call_chunked('SADD', pending_key, members, 1) end
end

local function flush_all(touched)
  flush_lists()
  flush_users()
  flush_contexts()
  flush_items()
  flush_marks('users')
  flush_marks('items')
  remember_pending(touched)
  return flush_holds()
end

local batch, why = check_batch(ARGV[16])
if batch == nil then return redis.error_reply('sagestream: invalid batch: ' .. why) end

local raw_wm = redis.call('GET', wm_key)
local wm = raw_wm and tonumber(raw_wm) or -1
local applied, skipped, duplicates, last = 0, 0, 0, nil
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
    local weight, ctx, eid = e[6], e[7], e[8]
    if weight == cjson.null then weight = nil end
    if ctx == cjson.null then ctx = nil end
    if eid == cjson.null then eid = nil end
    if apply_event({off = e[1], user = e[2], item = e[3], action = e[4], ts = e[5],
        weight = weight, ctx = ctx, eid = eid}, touched) then
      applied = applied + 1
    else
      duplicates = duplicates + 1
    end
    last = e[1]
  end
end
local capped = flush_all(touched)
if block ~= nil then redis.call('SET', block_key, string.format('%.0f', block)) end
if last ~= nil then
  wm = last
  redis.call('SET', wm_key, string.format('%.0f', last))
end
return {applied, skipped, string.format('%.0f', wm), duplicates, capped}
