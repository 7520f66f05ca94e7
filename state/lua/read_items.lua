-- Read many items' state in one shard in one call: what the re-encoder needs to encode them.
--
-- One call per shard and page of items replaces a pipelined HMGET + ZRANGE per (shard, item):
-- the same reads, but one command to pack, send and parse instead of two per item. Reading in one
-- script also makes each item's version, degree, origin and list one consistent snapshot.
--
-- KEYS[1]  the shard's watermark key (as in apply_batch.lua: every key is built from it, so all
--          carry its hash tag and the call stays in one cluster slot)
-- ARGV[1]  key layout JSON (state/keys.py: lua_layout)
-- ARGV[2]  k_max: entries read from each list, as a trim would leave it (coengagement rule 7)
-- ARGV[3..] pairs: an item id, then the stamp of the list the caller holds, "<version>|<t0>"
--          ('' for none)
-- Returns one {version|nil, degree|nil, t0|nil, members, scores} per item: the list's members,
-- strongest first, as one string joined by the entry separator (ids never contain it), and their
-- scores as one string of little-endian float64s; or only
-- {version, degree, t0} when the stamp is the one held: a list changes only with its item's
-- version in this shard (state/list_cache.py says why), so the caller's copy is current. Packed,
-- a score costs the reader a slice of one buffer instead of parsing a 17-digit decimal (each
-- ~350 ns in Python; a pass reads 4 shards x k_max of them per dirty item). tonumber() reads
-- the %.17g text Redis hands Lua back to the stored double exactly, so nothing is rounded. Joined,
-- the members are one reply string, not k_max: Redis writes one, the client parses one, and the
-- reader's cache (state/list_cache.py) holds one object per list instead of k_max.

local L = cjson.decode(ARGV[1])
local wm_key = KEYS[1]
if string.sub(wm_key, -#L.wm) ~= L.wm then
  return redis.error_reply('sagestream: KEYS[1] is not a watermark key')
end
local base = string.sub(wm_key, 1, #wm_key - #L.wm)
local k_max = tonumber(ARGV[2])
local item_head = base .. L.item .. L.sep
local nb_head = base .. L.nb .. L.sep
-- The list of one item in this shard: joined members, strongest first, and packed scores.
local function read_list(id)
  local list = redis.call('ZRANGE', nb_head .. id, 0, k_max - 1, 'REV', 'WITHSCORES')
  local members, scores = {}, {}
  for j = 1, #list, 2 do
    members[#members + 1] = list[j]
    scores[#scores + 1] = tonumber(list[j + 1])
  end
  local packed = ''
  if #scores > 0 then
    packed = struct.pack('<' .. string.rep('d', #scores), unpack(scores))
  end
  return table.concat(members, L.entry_sep), packed
end

if #ARGV % 2 ~= 0 then
  return redis.error_reply('sagestream: read_items takes (item id, stamp held) pairs')
end
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local head = redis.call('HMGET', item_head .. id, L.f_version, L.f_degree, L.f_t0)
  if head[1] and head[1] .. '|' .. (head[3] or '') == ARGV[i + 1] then
    out[#out + 1] = head
  else
    local members, packed = read_list(id)
    out[#out + 1] = {head[1], head[2], head[3], members, packed}
  end
end
return out
