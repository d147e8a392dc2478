-- PRESENCE: ARGV[3] lease ms, ARGV[4] this instance's users for the presence list (see
-- Cluster::online for the format). Stores it under presence:<id>, gone with the lease if
-- the instance dies, and returns the lists of every other live instance.
redis.call('SET', P .. 'presence:' .. ME, ARGV[4], 'PX', ARGV[3])
local out = {}
for _, inst in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
  if inst ~= ME and alive(inst) then
    local list = redis.call('GET', P .. 'presence:' .. inst)
    if list then table.insert(out, list) end
  end
end
return out
