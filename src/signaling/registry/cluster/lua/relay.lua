-- RELAY: ARGV[3] name, ARGV[4] session id, ARGV[5] kind (answer, decline, close, or media or
-- candidate when the instance could not tell the partner from its own copy), ARGV[6] the
-- partner the client named ('' for none), ARGV[7] frame, ARGV[8] the named partner's key.
-- Only the two partners may exchange these. Returns {'ok', partner, its instance, its
-- session, sender's version, partner's version}, {'gone', partner, sender's version} when
-- the partner's side had already ended, or a refusal.
local name, sid, kind, to, frame = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local mine = record(name)
if not mine or mine.inst ~= ME or mine.sid ~= sid then return {'stale'} end
if mine.state == 'resuming' and (kind == 'close' or kind == 'decline') then
  -- Hanging up while waiting for the other side to resume: stop waiting.
  clear_call(name, ME)
  mine.peer = nil
end
if not mine.peer or mine.state == 'resuming' then
  if to == '' then return {'no-call'} end
  return {'not-in-call'}
end
if to ~= '' and to ~= mine.peer and resolve(to, ARGV[8]) ~= mine.peer then
  return {'not-in-call'}
end
local peer = mine.peer
local theirs = record(peer)
if not theirs or theirs.peer ~= name then
  return {'gone', peer, tostring(clear_call(name, ME))}
end
local my_ver, their_ver
if kind == 'answer' then
  my_ver, their_ver = set_state(name, 'active'), set_state(peer, 'active')
elseif kind == 'decline' or kind == 'close' then
  my_ver, their_ver = clear_call(name, ME), clear_call(peer, theirs.inst)
else
  my_ver, their_ver = version(name), '0'
end
if theirs.inst ~= ME then
  send(theirs.inst, kind, peer, theirs.sid, name, ME, sid, their_ver, frame)
end
return {'ok', peer, theirs.inst, theirs.sid, tostring(my_ver), tostring(their_ver)}
