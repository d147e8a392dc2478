-- CLAIM: ARGV[3] lease ms, ARGV[4] '1' to overwrite call state, ARGV[5] HOLD ms, ARGV[6]
-- the digest of a login's reconnect token ('' to leave it), then groups of name, its key,
-- session id, peer ('' for none), state, version. Renews the lease too.
-- A name is free when nobody holds it, when its holder's lease is gone, or when the holder
-- is this instance (which checked its own sockets before asking); and when no other name
-- with the same key is held by a live instance (this one included). Returns the names
-- refused.
redis.call('SET', ikey(ME), '1', 'PX', ARGV[3])
redis.call('SADD', P .. 'instances', ME)
local overwrite = ARGV[4] == '1'
HOLD = tonumber(ARGV[5]) or 0
local tok = ARGV[6]
local refused = {}
for i = 7, #ARGV, 6 do
  local name, key, sid, peer, state, ver =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local rec = record(name)
  local twin = redis.call('GET', fkey(key))
  local twin_rec = twin and twin ~= name and record(twin)
  if (rec and rec.inst ~= ME and alive(rec.inst)) or (twin_rec and alive(twin_rec.inst)) then
    table.insert(refused, name)
  else
    if twin_rec then
      end_partner(twin, twin_rec, '')
      remove(twin, twin_rec)
    end
    local same = rec and rec.inst == ME and rec.sid == sid
    if rec and not same then
      end_partner(name, rec, '')
      remove(name, rec)
    end
    if not same then
      -- A record written back after Redis lost it keeps counting from the instance's copy.
      redis.call('HSET', ukey(name), 'inst', ME, 'sid', sid, 'ver', ver)
    end
    if overwrite or not same then
      if peer ~= '' then
        set_call(name, ME, peer, state)
        -- A wait for a resume written back after Redis lost it is bounded again.
        if state == 'resuming' and HOLD > 0 then
          redis.call('HSET', ukey(name), 'until', now_ms() + HOLD)
        end
      else
        clear_call(name, ME)
      end
    end
    redis.call('SET', fkey(key), name)
    redis.call('HSET', ukey(name), 'fk', key)
    redis.call('SADD', ikey(ME) .. ':users', name)
    if tok ~= '' then redis.call('HSET', ukey(name), 'tok', tok) end
  end
end
return refused
