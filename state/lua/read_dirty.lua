-- Read the oldest dirty marks of one kind in one shard and forget their "dirtied again" flags.
--
-- A mark keeps the ts that first dirtied it (ZADD NX), so its score does not move when the
-- entity is dirtied again. The apply script sets a flag in the redirty hash instead; this read
-- clears the flags of the marks it hands out, and clear_dirty keeps any mark whose flag came
-- back, i.e. that was dirtied after this read.
--
-- KEYS[1] dirty zset, KEYS[2] redirty hash (same shard, same slot). ARGV[1] limit.
-- Returns the flat ZRANGE WITHSCORES reply.

local flat = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #flat, 2 do
  redis.call('HDEL', KEYS[2], flat[i])
end
return flat
