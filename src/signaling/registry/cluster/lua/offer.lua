-- OFFER: ARGV[3] name, ARGV[4] session id, ARGV[5] callee as typed, ARGV[6] frame,
-- ARGV[7] the callee's key.
-- Starts a call (both sides free) or renegotiates the current one, and sends the frame to
-- the callee's instance unless that is the caller's own (which delivers it itself).
-- Returns {'ok', callee instance, callee session, '1' for a new call or '0', caller's
-- version, callee's version, callee's name}, or a refusal.
local name, sid, to, frame = ARGV[3], ARGV[4], resolve(ARGV[5], ARGV[7]), ARGV[6]
local mine = record(name)
if not mine or mine.inst ~= ME or mine.sid ~= sid then return {'stale'} end
local theirs = record(to)
if not theirs or not alive(theirs.inst) then return {'unknown'} end
-- A request to resume is not a call: a new call replaces it.
if mine.peer and mine.state == 'resuming' then
  clear_call(name, ME)
  mine.peer = nil
end
if mine.peer then
  if mine.peer ~= to then return {'in-call', mine.peer} end
  if theirs.peer == name then
    local ver = version(to)
    if theirs.inst ~= ME then send(theirs.inst, 'offer', to, theirs.sid, name, ME, sid, '0', frame) end
    return {'ok', theirs.inst, theirs.sid, '0', version(name), ver, to}
  end
  -- The partnership was one-sided (its other half already ended): start afresh.
  clear_call(name, ME)
end
-- Waiting to resume a call with the caller is no reason to be busy for the caller.
if theirs.peer and not (theirs.peer == name and theirs.state == 'resuming') then
  return {'busy', to}
end
local my_ver = set_call(name, ME, to, 'calling')
local their_ver = set_call(to, theirs.inst, name, 'ringing')
if theirs.inst ~= ME then send(theirs.inst, 'offer', to, theirs.sid, name, ME, sid, their_ver, frame) end
return {'ok', theirs.inst, theirs.sid, '1', tostring(my_ver), tostring(their_ver), to}
