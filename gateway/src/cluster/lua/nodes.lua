-- Every live node's record (for GET /api/cluster), pruning members whose heartbeat expired.
-- KEYS[1] = P:nodes; ARGV[1] = P
local view = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. ':node:' .. id)
  if record then
    table.insert(view, record)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return view
