-- Remove dirty marks that were handled: only marks whose score is unchanged and that were not
-- dirtied again since they were read (see read_dirty.lua). Atomic, so a concurrent apply either
-- lands before (the flag is seen, the mark stays) or after (it makes a fresh mark).
--
-- KEYS[1] dirty zset, KEYS[2] redirty hash (same shard, same slot).
-- ARGV: member1, score1, member2, score2, ...  Returns the number of marks removed.

local removed = 0
for i = 1, #ARGV, 2 do
  local member, score = ARGV[i], tonumber(ARGV[i + 1])
  local current = tonumber(redis.call('ZSCORE', KEYS[1], member))
  if current ~= nil and current == score and redis.call('HEXISTS', KEYS[2], member) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
return removed
