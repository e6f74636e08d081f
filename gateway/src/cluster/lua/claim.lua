-- Claim a room for a node, or name its live owner. Atomic: Redis runs one script at a
-- time, so two nodes racing for one room see each other's claim.
-- KEYS[1] = P:room:ROOM
-- ARGV[1] = P (key prefix), ARGV[2] = node to claim for, ARGV[3] = claim lifetime in ms
-- A claim is only as alive as its owner's record: the record lives one TTL, the claim
-- several, so most heartbeats need not renew every claim.
-- Returns {owner, outcome, owner's node record}; outcome is
--   "existing"  the room has a live owner (returned),
--   "won"       the room is now claimed for ARGV[2],
--   "refused"   ARGV[2] is dead or draining (owner and record are empty).
local owner = redis.call('GET', KEYS[1])
if owner then
  local record = redis.call('GET', ARGV[1] .. ':node:' .. owner)
  if record then
    return {owner, 'existing', record}
  end
  -- The owner's heartbeat expired: it is dead, and its claim with it.
end
local record = redis.call('GET', ARGV[1] .. ':node:' .. ARGV[2])
if not record or cjson.decode(record).state ~= 'active' then
  return {'', 'refused', ''}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {ARGV[2], 'won', record}
