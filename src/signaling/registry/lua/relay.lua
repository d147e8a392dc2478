-- RELAY: ARGV[3] name, ARGV[4] session id, ARGV[5] kind (answer, candidate, decline,
-- close), ARGV[6] the partner the client named ('' for none), ARGV[7] frame.
-- Only the two partners may exchange these. Returns {'ok', partner, its instance, its
-- session}, {'gone', partner} when the partner's side had already ended, or a refusal.
local name, sid, kind, to, frame = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local mine = record(name)
if not mine or mine.inst ~= ME or mine.sid ~= sid then return {'stale'} end
if not mine.peer then
  if to == '' then return {'no-call'} end
  return {'not-in-call'}
end
if to ~= '' and to ~= mine.peer then return {'not-in-call'} end
local peer = mine.peer
local theirs = record(peer)
if not theirs or theirs.peer ~= name then
  clear_call(name, ME)
  return {'gone', peer}
end
if kind == 'answer' then
  redis.call('HSET', ukey(name), 'state', 'active')
  redis.call('HSET', ukey(peer), 'state', 'active')
elseif kind == 'decline' or kind == 'close' then
  clear_call(name, ME)
  clear_call(peer, theirs.inst)
end
if theirs.inst ~= ME then send(theirs.inst, kind, peer, theirs.sid, name, frame) end
return {'ok', peer, theirs.inst, theirs.sid}
