-- HEARTBEAT: ARGV[3] lease ms. Renews the lease, and ends the calls of this instance's users
-- whose partner has vanished (a lost pub/sub message must not leave anyone in a call).
-- Returns {lease existed (0/1), names held, then name, partner, version for each ended call}.
local had = redis.call('EXISTS', ikey(ME))
redis.call('SET', ikey(ME), '1', 'PX', ARGV[3])
redis.call('SADD', P .. 'instances', ME)
local out = {tostring(had), tostring(redis.call('SCARD', ikey(ME) .. ':users'))}
for _, name in ipairs(redis.call('SMEMBERS', ikey(ME) .. ':calls')) do
  local rec = record(name)
  if not rec or rec.inst ~= ME or not rec.peer then
    redis.call('SREM', ikey(ME) .. ':calls', name)
  elseif rec.state == 'resuming' then
    -- Waiting for a vanished partner to resume: ended here when the hold runs out. (A
    -- request the user made has no 'until': its session bounds it.)
    local deadline = redis.call('HGET', ukey(name), 'until')
    if deadline and tonumber(deadline) <= now_ms() then
      table.insert(out, name)
      table.insert(out, rec.peer)
      table.insert(out, tostring(clear_call(name, ME)))
    end
  else
    local theirs = record(rec.peer)
    if not theirs or theirs.peer ~= name or not alive(theirs.inst) then
      local ver = clear_call(name, ME)
      table.insert(out, name)
      table.insert(out, rec.peer)
      table.insert(out, tostring(ver))
    end
  end
end
return out
