-- Read many users' state in one shard in one call: what the re-encoder needs to encode them.
--
-- One call per shard and page of users replaces a pipelined HMGET + LRANGE per user: the same
-- reads, but one command to pack, send and parse instead of two per user. Inside one script the
-- versions and sequences are one snapshot (no apply runs between them), which is stronger than
-- the "versions first, then sequences" order the pipelined reads relied on.
--
-- KEYS[1]  the shard's watermark key (as in apply_batch.lua: every key is built from it, so all
--          carry its hash tag and the call stays in one cluster slot)
-- ARGV[1]  key layout JSON (state/keys.py: lua_layout)
-- ARGV[2]  first sequence index to read, as LRANGE takes it: 0 for the whole sequence, -n for
--          its last n actions
-- ARGV[3..] user ids
-- Returns one flat array, per user: version|nil, ts_max|nil, n, then the n sequence entries
-- ("item|action|ts", oldest first). Flat, so the client parses no nested replies.

local L = cjson.decode(ARGV[1])
local wm_key = KEYS[1]
if string.sub(wm_key, -#L.wm) ~= L.wm then
  return redis.error_reply('sagestream: KEYS[1] is not a watermark key')
end
local base = string.sub(wm_key, 1, #wm_key - #L.wm)
local first = tonumber(ARGV[2])
local user_head = base .. L.user .. L.sep
local seq_head = base .. L.seq .. L.sep
local out, n = {}, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local head = redis.call('HMGET', user_head .. id, L.f_version, L.f_ts_max)
  local seq = redis.call('LRANGE', seq_head .. id, first, -1)
  out[n + 1], out[n + 2], out[n + 3] = head[1], head[2], #seq
  n = n + 3
  for j = 1, #seq do out[n + j] = seq[j] end
  n = n + #seq
end
return out
