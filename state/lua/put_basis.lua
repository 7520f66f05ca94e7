-- Record what an item was last encoded from, unless a newer encoding already recorded its own.
--
-- Two workers may encode one item concurrently (its dirty marks live in several shards); the
-- vector store keeps the higher state version, and this keeps the basis beside it the same way.
-- A different model version always replaces the basis (a new model starts its own history).
--
-- KEYS[1] the item's basis hash.
-- ARGV[1] state version, ARGV[2] model version, ARGV[3] basis JSON,
-- ARGV[4..6] the field names of version, model and basis (state/keys.py owns them).
-- Returns 1 when written, 0 when a newer (or equal) one of the same model was kept.

local f_version, f_model, f_basis = ARGV[4], ARGV[5], ARGV[6]
local held = redis.call('HMGET', KEYS[1], f_version, f_model)
if held[1] and held[2] == ARGV[2] and tonumber(held[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], f_version, ARGV[1], f_model, ARGV[2], f_basis, ARGV[3])
return 1
