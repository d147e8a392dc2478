-- PRUNE: ARGV[3] a session id, then names. Frees names this instance holds in Redis but no
-- socket of its holds any more (a release that failed while Redis was away). Only sessions
-- older than ARGV[3] go, so a login that raced the check keeps its name.
local below = tonumber(ARGV[3])
local freed = 0
for i = 4, #ARGV do
  local name = ARGV[i]
  local rec = record(name)
  if rec and rec.inst == ME and tonumber(rec.sid) < below then
    end_partner(name, rec, '')
    remove(name, rec)
    freed = freed + 1
  elseif not rec or rec.inst ~= ME then
    redis.call('SREM', ikey(ME) .. ':users', name)
  end
end
return freed
