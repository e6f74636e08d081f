-- Give up rooms (emptied, or all of them when the node leaves); only claims that still
-- name this node are deleted. With ARGV[3] = "leave" the node's record goes too.
-- KEYS[1] = P:node:ME, KEYS[2] = P:nodes
-- ARGV[1] = P, ARGV[2] = ME, ARGV[3] = "leave" or "stay", ARGV[4..] = rooms
-- Returns how many claims were deleted.
local released = 0
for i = 4, #ARGV do
  local key = ARGV[1] .. ':room:' .. ARGV[i]
  if redis.call('GET', key) == ARGV[2] then
    redis.call('DEL', key)
    released = released + 1
  end
end
if ARGV[3] == 'leave' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return released
