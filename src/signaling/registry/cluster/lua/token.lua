-- TOKEN: ARGV[3] name, ARGV[4] session id, ARGV[5] the digest of the user's new reconnect
-- token, ARGV[6] 'set' or 'take', ARGV[7] (take) the digest of the token presented.
-- 'set': records the new digest for this instance's session (after a takeover here).
-- 'take': a login on this instance presenting the current token of a user held elsewhere
-- (a socket in grace, one that still looks open, or one on an instance that died): the
-- record moves here with its call. The old instance is told to let its socket go without a
-- word to anyone ('taken'), and the partner's instance where the user is now ('moved').
-- Returns {'taken', peer or '', state or '', peer's instance, peer's session, my version,
-- peer's version}, {'free'} when nobody holds the name, or {'refused'}.
local name, sid, tok, mode = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local rec = record(name)
if mode == 'set' then
  if rec and rec.inst == ME and rec.sid == sid then
    redis.call('HSET', ukey(name), 'tok', tok)
    return {'ok'}
  end
  return {'stale'}
end
if not rec then return {'free'} end
-- Both sides are SHA-256 digests of 128-bit secrets: what comparing them could leak says
-- nothing about a token.
if redis.call('HGET', ukey(name), 'tok') ~= ARGV[7] then return {'refused'} end
redis.call('SREM', ikey(rec.inst) .. ':users', name)
redis.call('SREM', ikey(rec.inst) .. ':calls', name)
redis.call('HSET', ukey(name), 'inst', ME, 'sid', sid, 'tok', tok)
redis.call('SADD', ikey(ME) .. ':users', name)
if rec.peer then redis.call('SADD', ikey(ME) .. ':calls', name) end
local ver = redis.call('HINCRBY', ukey(name), 'ver', 1)
if rec.inst ~= ME and alive(rec.inst) then
  send(rec.inst, 'taken', name, rec.sid, name, ME, sid, ver, '')
end
local peer_inst, peer_sid, their_ver = '', '0', '0'
if rec.peer and rec.state ~= 'resuming' then
  local theirs = record(rec.peer)
  if theirs and theirs.peer == name then
    peer_inst, peer_sid = theirs.inst, theirs.sid
    their_ver = redis.call('HINCRBY', ukey(rec.peer), 'ver', 1)
    if theirs.inst ~= ME then
      send(theirs.inst, 'moved', rec.peer, theirs.sid, name, ME, sid, their_ver, '')
    end
  end
end
return {'taken', rec.peer or '', rec.state or '', peer_inst, peer_sid, tostring(ver),
  tostring(their_ver)}
