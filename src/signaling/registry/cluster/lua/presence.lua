-- PRESENCE: ARGV[3] ms to keep it, ARGV[4] this instance's users for the presence list (see
-- Cluster::online for the format). Stores it under presence:<id>, and returns the lists of
-- every other live instance (a list outlives its instance's lease, but is not read then).
redis.call('SET', P .. 'presence:' .. ME, ARGV[4], 'PX', ARGV[3])
local out = {}
for _, inst in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
  if inst ~= ME and alive(inst) then
    local list = redis.call('GET', P .. 'presence:' .. inst)
    if list then table.insert(out, list) end
  end
end
return out
