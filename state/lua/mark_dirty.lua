-- Mark entities of one kind dirty in one shard, as the apply script marks them (flush_marks):
-- a new mark gets the given score (the first dirty ts); an entity already marked keeps its
-- score and gets its "dirtied again" flag, so a pass that read the mark before this call keeps
-- it when it clears (clear_dirty.lua) and encodes the entity once more.
--
-- KEYS[1] dirty zset, KEYS[2] redirty hash (same shard, same slot).
-- ARGV: score1, member1, score2, member2, ...  Returns the number of new marks.

local members = {}
for i = 2, #ARGV, 2 do members[#members + 1] = ARGV[i] end
if #members == 0 then return 0 end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(members))
local added = 0
for i, member in ipairs(members) do
  if scores[i] then
    redis.call('HSET', KEYS[2], member, '1')
  else
    added = added + redis.call('ZADD', KEYS[1], ARGV[2 * i - 1], member)
  end
end
return added
