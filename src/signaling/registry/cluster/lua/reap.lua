-- REAP: ARGV[3] 'reap' or 'leave', ARGV[4] HOLD ms. 'reap' frees the names of every
-- instance whose lease lapsed and tells their partners (or, with HOLD, lets them wait for a
-- resume); any instance may run it, and twice is harmless. 'leave'
-- does the same for the calling instance at shutdown. Returns {reaped, live instances}.
HOLD = tonumber(ARGV[4]) or 0
local function reap(inst)
  for _, name in ipairs(redis.call('SMEMBERS', ikey(inst) .. ':users')) do
    local rec = record(name)
    if rec and rec.inst == inst then
      end_partner(name, rec, inst)
      forget(name)
    end
  end
  redis.call('DEL', ikey(inst) .. ':users', ikey(inst) .. ':calls', ikey(inst),
    P .. 'presence:' .. inst)
  redis.call('SREM', P .. 'instances', inst)
end
if ARGV[3] == 'leave' then
  reap(ME)
  return {1, 0}
end
local reaped, live = 0, 0
for _, inst in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
  if inst == ME or alive(inst) then
    live = live + 1
  else
    reap(inst)
    reaped = reaped + 1
  end
end
return {reaped, live}
