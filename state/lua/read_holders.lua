-- Read many items' holders in one shard in one call: whom the re-encoder's fan-out may mark.
--
-- One call per shard and page of items replaces a pipelined ZRANGE per (shard, item): the same
-- read (the whole holder index, which apply_batch.lua already caps to the newest hold_max), one
-- command to pack, send and parse instead of one per item.
--
-- KEYS[1]  the shard's watermark key (as in apply_batch.lua: every key is built from it, so all
--          carry its hash tag and the call stays in one cluster slot)
-- ARGV[1]  key layout JSON (state/keys.py: lua_layout)
-- ARGV[2..] item ids
-- Returns one flat array, per item: n, then n pairs user, offset (ZRANGE WITHSCORES order:
-- oldest offset first). Flat, so the client parses no nested replies.

local L = cjson.decode(ARGV[1])
local wm_key = KEYS[1]
if string.sub(wm_key, -#L.wm) ~= L.wm then
  return redis.error_reply('sagestream: KEYS[1] is not a watermark key')
end
local hold_head = string.sub(wm_key, 1, #wm_key - #L.wm) .. L.hold .. L.sep
local out, n = {}, 0
for i = 2, #ARGV do
  local flat = redis.call('ZRANGE', hold_head .. ARGV[i], 0, -1, 'WITHSCORES')
  n = n + 1
  out[n] = #flat / 2
  for j = 1, #flat do out[n + j] = flat[j] end
  n = n + #flat
end
return out
