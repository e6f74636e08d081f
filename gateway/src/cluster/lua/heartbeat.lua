-- One round trip per heartbeat: publish this node's record, renew (or, after Redis lost
-- its data, re-assert) the rooms it names, and read the membership view. Most beats name
-- no room (a claim stays valid while its owner's record lives); every few beats, and
-- after a reconnect, the node names all of them.
-- KEYS[1] = P:node:ME, KEYS[2] = P:nodes
-- ARGV[1] = P, ARGV[2] = ME, ARGV[3] = record (JSON), ARGV[4] = record lifetime in ms,
-- ARGV[5] = this process's instance token, ARGV[6] = claim lifetime in ms,
-- ARGV[7..] = rooms to renew
-- Returns {"ok", rooms owned by another node, records of every live node}, or
-- {"duplicate", {}, {the other process's record}} when a live record under this node id
-- belongs to another process (two nodes started with one --node-id): nothing is written.
local prefix, me, ttl = ARGV[1], ARGV[2], ARGV[4]
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and record.instance and record.instance ~= ARGV[5] then
    return {'duplicate', {}, {current}}
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
redis.call('SADD', KEYS[2], me)
local lost = {}
local claim_ttl = ARGV[6]
for i = 7, #ARGV do
  local key = prefix .. ':room:' .. ARGV[i]
  local owner = redis.call('GET', key)
  if owner == me then
    redis.call('PEXPIRE', key, claim_ttl)
  elseif not owner then
    redis.call('SET', key, me, 'PX', claim_ttl)
  else
    table.insert(lost, ARGV[i])
  end
end
local view = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local record = redis.call('GET', prefix .. ':node:' .. id)
  if record then
    table.insert(view, record)
  else
    redis.call('SREM', KEYS[2], id)
  end
end
return {'ok', lost, view}
