-- Remove dirty marks that were handled: only marks whose score is unchanged and that were not
-- dirtied again since they were read (see read_dirty.lua); those dirtied again are rescored. Atomic, so a concurrent apply either
-- lands before (the flag is seen, the mark stays) or after (it makes a fresh mark).
--
-- KEYS[1] dirty zset, KEYS[2] redirty hash (same shard, same slot).
-- ARGV[1] the time the pass read its marks, or '' : a mark dirtied again since it was read stays,
--         scored from then on with the later of its score and this time. Its first score counted
--         staleness the pass has removed: kept, an entity dirtied on every pass (a user whose
--         items keep changing) would report the age of its first mark on every pass after.
-- ARGV[2..]: member1, score1, member2, score2, ...  Returns the number of marks removed.

local rescore = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV, 2 do
  local member, score = ARGV[i], tonumber(ARGV[i + 1])
  local current = tonumber(redis.call('ZSCORE', KEYS[1], member))
  if current ~= nil and current == score then
    if redis.call('HEXISTS', KEYS[2], member) == 0 then
      removed = removed + redis.call('ZREM', KEYS[1], member)
    elseif rescore ~= nil and rescore > current then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[1], member)
    end
  end
end
return removed
