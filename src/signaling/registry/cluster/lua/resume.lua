-- RESUME: ARGV[3] name, ARGV[4] session id, ARGV[5] the user whose call to resume, ARGV[6]
-- frame, ARGV[7] 'ask' or 'lapse', ARGV[8] the user's key. A user not logged in yet is
-- named as asked for (the page asks with the name the server gave it).
-- 'ask': pairs the two as an active call when the other side is waiting to resume with
-- this one (and tells its instance), else records this side as waiting ('resuming').
-- Returns {'paired', their instance, their session, my version, their version, their
-- name}, {'active', their name} when the call is already back, {'waiting', my version,
-- their name}, or a refusal.
-- 'lapse': the wait ran out; drops the request if it is still pending. Returns
-- {'lapsed', my version} or {'no'}.
local name, sid, to, frame, mode = ARGV[3], ARGV[4], resolve(ARGV[5], ARGV[8]), ARGV[6], ARGV[7]
local mine = record(name)
if not mine or mine.inst ~= ME or mine.sid ~= sid then return {'stale'} end
if mode == 'lapse' then
  if mine.peer == to and mine.state == 'resuming' then
    return {'lapsed', tostring(clear_call(name, ME))}
  end
  return {'no'}
end
if mine.peer and mine.state ~= 'resuming' then
  if mine.peer == to and mine.state == 'active' then return {'active', mine.peer} end
  return {'in-call', mine.peer}
end
local theirs = record(to)
if theirs and theirs.peer == name and theirs.state == 'resuming' and alive(theirs.inst) then
  local my_ver = set_call(name, ME, to, 'active')
  local their_ver = set_call(to, theirs.inst, name, 'active')
  if theirs.inst ~= ME then
    send(theirs.inst, 'resume', to, theirs.sid, name, ME, sid, their_ver, frame)
  end
  return {'paired', theirs.inst, theirs.sid, tostring(my_ver), tostring(their_ver), to}
end
return {'waiting', tostring(set_call(name, ME, to, 'resuming')), to}
