-- The live owner of a room, for requests that must not create it.
-- KEYS[1] = P:room:ROOM; ARGV[1] = P
-- Returns {owner, owner's node record}, both empty when nobody live owns the room.
local owner = redis.call('GET', KEYS[1])
if owner then
  local record = redis.call('GET', ARGV[1] .. ':node:' .. owner)
  if record then
    return {owner, record}
  end
end
return {'', ''}
